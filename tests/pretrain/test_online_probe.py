"""train.online_probe: a linear head on the encoder's detached features that never changes the
pretraining (encoder weights bit-identical with and without it), reads nothing back from the device,
reads the feature the offline probe reads (jigsaw: the mean of an image's 9 tile features), averages
its gradient under DDP and resumes exactly (the crashed and resumed 2-worker Ray Train InfoMax runs of
test_train_ray.py and test_train_s3.py carry the probe, and their states are compared with it)."""
from __future__ import annotations

import pytest
import torch

from eval.features import encode_batch
from pretrain.config import validate
from pretrain.online_probe import OnlineProbe, image_features
from pretrain.plan import example_batch
from pretrain.train import build_optimizers, build_task_from_config, compile_model, permutations_of, train_step
from tests.support.run_states import same_nested, tiny_cfg
from tests.pretrain.test_gpu_path import HostSyncCounter

KINDS = {"infomax": ("infomax", "eta-mine"), "jigsaw": ("jigsaw-mi", "eta-mine")}


def _labelled(cfg, permutations, seed: int) -> dict:
    """The config's example batch with labels 0, 1, 2, 0, ... (jigsaw: by image, every puzzle its image's)."""
    batch = example_batch(cfg, permutations, seed=seed)
    batch["label"] = (batch["image_index"] if "image_index" in batch else torch.arange(batch["images"].shape[0])) % 3
    return batch


def _pretrain(kind: str, steps: int, with_probe: bool, compiled: bool = False):
    cfg = tiny_cfg(*KINDS[kind])
    permutations = permutations_of(cfg)
    torch.manual_seed(0)
    task = build_task_from_config(cfg, permutations)
    main_opt, eta_opt = build_optimizers(cfg, task)
    probe = OnlineProbe(task.encoder, 10, lr=1e-2, seed=0, device="cpu", kind=kind) if with_probe else None
    model = compile_model(task, torch.device("cpu"), backend="aot_eager") if compiled else task
    torch.manual_seed(1)  # the marginal pairs and dropout draw from here: the probe must not
    reads, metrics = [], []
    for step in range(steps):
        batch = task.host_prepare(_labelled(cfg, permutations, step))
        out = train_step(model, task, batch, step, main_opt, eta_opt)
        assert out["flags"].read().nonfinite is None
        if probe is not None:
            with HostSyncCounter() as counter:
                metrics.append(probe.step(batch))
            reads.append(len(counter.ops))
    return task, probe, reads, metrics


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_probe_leaves_the_encoder_bit_identical_and_reads_nothing_back(kind):
    plain, _, _, _ = _pretrain(kind, 2, with_probe=False)
    probed, probe, reads, metrics = _pretrain(kind, 2, with_probe=True)
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values()):
        assert torch.equal(a, b), name
    assert reads == [0, 0]  # top-1 and loss stay on the device until the report
    assert all(m["online_probe/loss"].ndim == 0 and 0 <= float(m["online_probe/top1"]) <= 100 for m in metrics)
    fresh = OnlineProbe(probed.encoder, 10, lr=1e-2, seed=0, device="cpu", kind=kind)
    assert not torch.equal(fresh.head.weight, probe.head.weight)  # the head did learn


@pytest.mark.e2e  # torch.compile's tracing: 20 s and more on a loaded machine
def test_under_compile_the_probe_learns_what_it_learns_eagerly():
    """train.compile: the task's forward and backward compiled (the graphs aot_eager captures, which
    inductor then generates code for), the probe's step eager; the encoder's output still reaches it."""
    eager_task, eager, _, eager_metrics = _pretrain("infomax", 2, with_probe=True)
    task, compiled, _, metrics = _pretrain("infomax", 2, with_probe=True, compiled=True)
    assert same_nested(eager_task.state_dict(), task.state_dict())
    assert same_nested(eager.head.state_dict(), compiled.head.state_dict())
    assert same_nested(eager_metrics, metrics)


@pytest.mark.parametrize("unique_tiles", [True, False], ids=["tiles", "patches"])
def test_the_jigsaw_probe_reads_the_feature_eval_reads(unique_tiles):
    """Both batch layouts: each image's (or puzzle's) row is eval's feature of the image's 9 tiles in
    their natural order (the mean of their features), labelled with the image's class."""
    cfg = tiny_cfg("jigsaw-mi", "eta-mine", f"data.unique_tiles={str(unique_tiles).lower()}")
    permutations = permutations_of(cfg)
    task = build_task_from_config(cfg, permutations).eval()  # batch-norm's running statistics: a tile's feature is its own
    probe = OnlineProbe(task.encoder, 10, lr=1e-2, seed=0, device="cpu", kind="jigsaw")
    batch = task.host_prepare(_labelled(cfg, permutations, 0))
    with torch.no_grad():
        task(batch)
    x, labels = image_features(probe.features, batch, "jigsaw")
    n_images = cfg.data.images_per_batch
    # the same draws in the tiles layout: each image's 9 tiles in their natural order
    tiles = example_batch(tiny_cfg("jigsaw-mi", "eta-mine", "data.unique_tiles=true"), permutations, seed=0)["tiles"]
    want = encode_batch(task.encoder, {"patches": tiles}, "jigsaw")  # [I, D]: eval's feature of each image
    rows = torch.arange(n_images) if unique_tiles else batch["image_index"]
    assert x.shape == (len(rows), task.encoder.feature_dim)
    torch.testing.assert_close(x, want[rows], rtol=1e-5, atol=1e-5)
    assert torch.equal(labels, torch.arange(n_images)[rows] % 3)


def test_unlabelled_samples_are_left_out_and_every_kind_is_accepted():
    cfg = tiny_cfg("infomax", "eta-mine")
    task = build_task_from_config(cfg, None)
    probe = OnlineProbe(task.encoder, 3, lr=1e-2, seed=0, device="cpu")
    batch = task.host_prepare(example_batch(cfg, None))
    task(batch)
    out = probe.step({**batch, "label": torch.full((8,), -1)})  # an unlabelled batch: nothing to learn, nothing counted
    assert float(out["online_probe/loss"]) == 0.0 and float(out["online_probe/top1"]) == 0.0
    for kind, estimator in KINDS.values():
        validate(tiny_cfg(kind, estimator, "train.online_probe=true", "train.compile=true"), check_shards=False)
    with pytest.raises(ValueError, match="unknown feature kind 'jigsaw-mi'"):
        OnlineProbe(task.encoder, 3, lr=1e-2, seed=0, device="cpu", kind="jigsaw-mi")
