"""The GPU throughput options each give the default path's batches, losses and gradients (on a CPU).

``data.augment_on=device``: uint8 tiles standardised by the task. ``optim.lr_scaling``: the schedule
of W workers. ``train.compile``: the compiled step.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

from data_prep import jigsaw
from pretrain.config import ConfigError, load_config, validate
from pretrain.plan import example_batch
from pretrain.train import build_task_from_config, permutations_of
from tests.support.run_states import tiny_cfg

JIGSAW = ["data.shards=/nonexistent", "task.kind=jigsaw-mi", "task.estimator=eta-mine", "model.encoder=dcgan",
          "model.depth=2", "model.kwargs.image_size=64", "data.images_per_batch=3", "data.perms_per_image=4",
          "data.num_permutations=10"]


def loss_and_grads(task, batch):
    task.zero_grad()
    out = task(batch)
    out["loss"].backward()
    return out, {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}


def test_device_augmentation_gives_the_host_batch_loss_and_gradients():
    tiles = np.random.default_rng(0).integers(0, 256, (3, 9, 64, 64, 3), dtype=np.uint8)
    perms = jigsaw.max_hamming_permutations(10, seed=0)
    host = jigsaw.make_batch(tiles, np.zeros(3), perms, 4, np.random.default_rng(5), gather=False)
    shipped = jigsaw.make_batch(tiles, np.zeros(3), perms, 4, np.random.default_rng(5), device_augment=True)
    assert shipped["tiles_u8"].dtype == torch.uint8 and "tiles" not in shipped
    assert shipped["gray"].any() and not shipped["gray"].all()  # both kinds of image in this batch
    for key in ("perm_index", "batch_perms", "perm_slot", "image_index", "perm_rows"):
        assert torch.equal(host[key], shipped[key]), key
    # the device's sync-free standardisation gives the host's tiles
    torch.testing.assert_close(jigsaw.standardise(shipped["tiles_u8"], shipped["gray"], sync_free=True),
                               host["tiles"], rtol=0, atol=0)
    cfg = load_config(None, JIGSAW)
    torch.manual_seed(0)
    task = build_task_from_config(cfg, permutations_of(cfg))
    out_h, grads_h = loss_and_grads(task, host)
    out_d, grads_d = loss_and_grads(task, shipped)
    torch.testing.assert_close(out_d["loss"], out_h["loss"], rtol=0, atol=0)
    assert grads_h.keys() == grads_d.keys()
    for name in grads_h:
        torch.testing.assert_close(grads_d[name], grads_h[name], rtol=0, atol=0, msg=name)


def test_device_augmentation_is_refused_where_it_does_not_apply():
    with pytest.raises(ConfigError, match="augment_on=device"):
        validate(load_config(None, JIGSAW + ["data.augment_on=device", "data.unique_tiles=false"]), check_shards=False)
    with pytest.raises(ConfigError, match="host or device"):
        validate(load_config(None, JIGSAW + ["data.augment_on=gpu"]), check_shards=False)
    cfg = load_config(None, JIGSAW + ["data.augment_on=device"])
    validate(cfg, check_shards=False)
    assert "tiles_u8" in example_batch(cfg, permutations_of(cfg))


@pytest.mark.parametrize("kind, backend", [("infomax", "aot_eager"), ("jigsaw-mi", "aot_eager"),
                                           pytest.param("jigsaw-mi", "inductor", marks=pytest.mark.e2e)])
def test_compiled_task_gives_the_eager_loss_and_gradients(kind, backend):
    """The graphs torch.compile captures (forward and backward) compute the eager step: ``aot_eager``
    checks the capture and autograd alone (seconds), for both kinds of task; ``inductor`` is what
    ``train.compile=true`` runs on a CPU, with its generated C++ kernels (tens of seconds to compile:
    marked e2e), for the jigsaw task of the paper's tables (the GPU suite compiles it on CUDA too)."""
    from pretrain.train import compile_model

    cfg = tiny_cfg(kind, "eta-mine")
    perms = permutations_of(cfg)
    torch.manual_seed(0)
    task = build_task_from_config(cfg, perms)
    batch = task.host_prepare(example_batch(cfg, perms))
    out_e, grads_e = loss_and_grads(task, batch)
    torch._dynamo.reset()
    out_c, grads_c = loss_and_grads(compile_model(task, torch.device("cpu"), backend=backend), batch)
    torch.testing.assert_close(out_c["loss"], out_e["loss"], rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 4
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)


def test_lr_scaling_schedules():
    from pretrain.train import lr_at, run_schedule

    base = ["data.shards=/nonexistent", "task.kind=infomax", "task.estimator=eta-mine", "model.encoder=dcgan",
            "train.steps=1000", "optim.lr=1e-4", "train.num_workers=8"]
    assert run_schedule(load_config(None, base)) == (1000, 1e-4)  # none: the config as written
    assert run_schedule(load_config(None, base + ["optim.lr_scaling=linear"])) == (125, pytest.approx(8e-4))
    assert run_schedule(load_config(None, base + ["optim.lr_scaling=sqrt", "train.num_workers=3"])) == (
        334, pytest.approx(1e-4 * 3 ** 0.5))
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 1.0, 0) == 1.0
    with pytest.raises(ConfigError, match="lr_scaling"):
        validate(load_config(None, base + ["optim.lr_scaling=cubic"]), check_shards=False)


@pytest.mark.parametrize("kind, estimator", [("jigsaw-mi", "eta-mine"), ("jigsaw-mi", "dv-mine"), ("infomax", "eta-mine"),
                                             ("jigsaw-ce", None)])
def test_each_task_compiles_to_one_graph_as_train_step_calls_it(kind, estimator):
    """torch.compile captures a task's whole forward in one graph (on CUDA: one CUDA graph a step, not
    several joined by eager code). train_step enters masks_checked outside the compiled model; a
    context variable set inside the traced forward would break the graph there."""
    from pretrain.estimators import masks_checked

    cfg = tiny_cfg(kind, estimator)
    perms = permutations_of(cfg)
    task = build_task_from_config(cfg, perms)
    batch = task.host_prepare(example_batch(cfg, perms))
    torch._dynamo.reset()
    with masks_checked():
        explained = torch._dynamo.explain(task)(batch)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
