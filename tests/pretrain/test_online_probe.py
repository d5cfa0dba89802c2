"""train.online_probe: a linear head on the encoder's detached features that never changes the
pretraining (encoder weights bit-identical with and without it), reads nothing back from the device,
averages its gradient under DDP and resumes exactly (a real 2-worker Ray Train run, crashed and restarted)."""
from __future__ import annotations

import pytest
import torch

from console.progress import LINE_RE
from pretrain import checkpoint as ck
from pretrain.config import ConfigError, load_config, validate
from pretrain.online_probe import OnlineProbe
from pretrain.plan import example_batch
from pretrain.train import build_optimizers, build_task_from_config, train_step
from tests.support.run_states import assert_same_state, infomax_overrides, read_metrics, tiny_cfg
from tests.pretrain.test_gpu_path import HostSyncCounter


def _same(a, b) -> bool:
    """Nested state dicts equal, tensors bit for bit."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _pretrain(steps: int, with_probe: bool):
    cfg = tiny_cfg("infomax", "eta-mine")
    torch.manual_seed(0)
    task = build_task_from_config(cfg, None)
    main_opt, eta_opt = build_optimizers(cfg, task)
    probe = OnlineProbe(task.encoder, 10, lr=1e-2, seed=0, device="cpu") if with_probe else None
    torch.manual_seed(1)  # the batches and the marginal pairs draw from here: the probe must not
    reads, metrics = [], []
    for step in range(steps):
        batch = task.host_prepare(example_batch(cfg, None, seed=step))
        batch["label"] = torch.arange(8) % 3
        out = train_step(task, task, batch, step, main_opt, eta_opt)
        assert out["flags"].read().nonfinite is None
        if probe is not None:
            with HostSyncCounter() as counter:
                metrics.append(probe.step(batch["label"]))
            reads.append(len(counter.ops))
    return task, probe, reads, metrics


def test_the_probe_leaves_the_encoder_bit_identical_and_reads_nothing_back():
    plain, _, _, _ = _pretrain(4, with_probe=False)
    probed, probe, reads, metrics = _pretrain(4, with_probe=True)
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values()):
        assert torch.equal(a, b), name
    assert reads == [0, 0, 0, 0]  # top-1 and loss stay on the device until the report
    assert all(m["online_probe/loss"].ndim == 0 and 0 <= float(m["online_probe/top1"]) <= 100 for m in metrics)
    fresh = OnlineProbe(probed.encoder, 10, lr=1e-2, seed=0, device="cpu")
    assert not torch.equal(fresh.head.weight, probe.head.weight)  # the head did learn


def test_unlabelled_samples_are_left_out_and_the_config_is_checked(tmp_path):
    cfg = tiny_cfg("infomax", "eta-mine")
    task = build_task_from_config(cfg, None)
    probe = OnlineProbe(task.encoder, 3, lr=1e-2, seed=0, device="cpu")
    task(task.host_prepare(example_batch(cfg, None)))
    out = probe.step(torch.full((8,), -1))  # an unlabelled batch: nothing to learn, nothing counted
    assert float(out["online_probe/loss"]) == 0.0 and float(out["online_probe/top1"]) == 0.0
    with pytest.raises(ConfigError, match="train.online_probe is for task.kind=infomax"):
        validate(tiny_cfg("jigsaw-mi", "eta-mine", "train.online_probe=true"), check_shards=False)
    with pytest.raises(ConfigError, match="without train.compile"):
        validate(tiny_cfg("infomax", "eta-mine", "train.online_probe=true", "train.compile=true"), check_shards=False)


@pytest.mark.e2e
@pytest.mark.ray
def test_two_workers_with_the_probe_resume_exactly_after_a_crash(ray_session, tmp_path, capfd):
    """2 DDP ranks, 12 steps with the probe: a run whose worker dies at step 6 (Ray restarts the group
    from the checkpoint at step 4) ends in the state of an uninterrupted run, bit for bit: encoder,
    heads, η, optimisers and the probe's head and Adam; every report shows the probe's top-1. (That the
    probe leaves the pretraining bit-identical to a run without it: the test above, on the same step.)"""
    from tests.support.shards import synthetic_shards
    from pretrain.train import launch

    shards = synthetic_shards(tmp_path / "shards", 32, {"train": 160}, shard_size=40)

    def run(name, *extra):
        return launch(load_config(None, infomax_overrides(str(shards), str(tmp_path / name), "train.online_probe=true", *extra))).run_dir

    probed_dir = run("probed")
    crashed_dir = run("crashed", "train.crash_at_step=6")
    probed, crashed = ck.load_checkpoint(probed_dir), ck.load_checkpoint(crashed_dir)
    assert (crashed_dir / ".crashed_at_step").read_text() == "6" and crashed["step"] == 12
    assert_same_state(crashed, probed)
    assert _same(probed["online_probe"], crashed["online_probe"])  # the head and its Adam resumed exactly
    assert probed["online_probe"]["optimizer"]["state"][0]["step"] == 12
    records = read_metrics(probed_dir)
    assert [r["step"] for r in records] == [4, 8, 12]
    assert all(0.0 <= r["online_probe/top1"] <= 100.0 and r["online_probe/loss"] > 0 for r in records)
    lines = [m for m in map(LINE_RE.match, capfd.readouterr().out.splitlines()) if m and m["probe_top1"] is not None]
    assert len(lines) >= 3, "no progress line with the probe's top-1"
