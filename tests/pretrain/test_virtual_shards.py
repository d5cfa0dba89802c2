"""Virtual shards: the result of a run does not depend on how many workers computed it.

V = 4 micro-batches a step, run by 1, 2 and 4 processes (gloo on 127.0.0.1, DDP as the Ray loop wraps
it), end after 30 steps with the same weights up to float32 summation error, for every bound the docs
call W-invariant; a run written by 2 Ray workers and resumed on 1 ends where the uninterrupted run ends.
"""
from __future__ import annotations

import pytest
import torch

from pretrain import checkpoint as ck
from pretrain.config import ConfigError, load_config
from tests.support.shards import folder_shards
from tests.pretrain.shard_runs import spawn_ranks

pytestmark = pytest.mark.e2e

# docs/reliability.md, "Elastic and preemptible runs": the bounds whose step is a function of each virtual
# shard's micro-batch alone (the EMA of dv-mine-ema included: it is a buffer, combined over the shards)
INVARIANT = ["eta-mine", "eta-mine-clip", "dv-mine", "dv-mine-ema", "f-mine", "a-mine", "infonce", "jsd", "smile"]


def relative_gap(a: dict, b: dict) -> float:
    """max |Δw| / max |w| over the floating tensors (weights, η, batch-norm statistics) of two states."""
    keys = [k for k in a if a[k].is_floating_point()]
    gap = max((a[k].double() - b[k].double()).abs().max().item() for k in keys)
    return gap / max(a[k].double().abs().max().item() for k in keys)


def test_one_two_and_four_workers_end_with_the_same_weights(tmp_path):
    """Measured after 30 steps (lr 1e-4): η-MINE 6e-8 (float32 rounding of the weights), the other
    bounds up to 3e-5 (InfoNCE: its softmax passes rounding differences on with a larger gain)."""
    spawn_ranks(1, INVARIANT, 30, str(tmp_path / "w1.pt"))
    spawn_ranks(2, INVARIANT, 30, str(tmp_path / "w2.pt"))
    spawn_ranks(4, ["eta-mine"], 30, str(tmp_path / "w4.pt"))
    one, two, four = (torch.load(tmp_path / f"w{w}.pt", weights_only=True) for w in (1, 2, 4))
    assert relative_gap(one["eta-mine"], four["eta-mine"]) < 1e-6
    assert relative_gap(one["eta-mine"], two["eta-mine"]) < 1e-6
    for name in INVARIANT:
        assert relative_gap(one[name], two[name]) < 1e-4, name
        assert one[name]["encoder.layers.1.1.num_batches_tracked"] == 30  # one count a step, not one a micro-batch


def test_four_workers_restarted_mid_run_end_bit_identical_to_the_uninterrupted_run(tmp_path):
    """A restart makes a new DDP, whose first backward all-reduces its gradients in another bucket layout
    than the later ones do; with 4 ranks DDP's own all-reduce then rounds that step otherwise (measured:
    the weights 1e-8 apart after it, 6e-2 after 300 steps at lr 1e-3). The rank-ordered mean does not."""
    spawn_ranks(4, ["eta-mine"], 6, str(tmp_path / "straight.pt"))
    spawn_ranks(4, ["eta-mine"], 6, str(tmp_path / "restarted.pt"), restart_at=3)
    straight, restarted = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["eta-mine"] for n in ("straight", "restarted"))
    assert straight.keys() == restarted.keys()
    assert all(torch.equal(straight[k], restarted[k]) for k in straight)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """48 random 32×32 PNGs, 4 shards."""
    return folder_shards(tmp_path_factory.mktemp("vs"), 48, n_classes=4, size=32, shard_size=12)


def run_overrides(shards, root) -> list[str]:
    """A tiny InfoMax η-MINE run of V = 4 virtual shards on 2 workers."""
    return [f"data.shards={shards}", f"run.root={root}", "run.name=vs", "task.kind=infomax", "task.estimator=eta-mine",
            "task.kwargs.hidden_dim=16", "task.kwargs.embed_dim=8", "model.encoder=dcgan", "model.depth=2",
            "data.batch_size=4", "data.batches_per_epoch=5", "data.virtual_shards=4", "train.num_workers=2"]


def run_cfg(shards, root, *extra):
    return load_config(None, [*run_overrides(shards, root), "train.steps=12", "train.report_every=4",
                              "train.checkpoint_every=4", *extra])


@pytest.mark.ray
def test_a_run_of_two_workers_resumed_on_one_ends_where_the_uninterrupted_run_ends(ray_session, shards, tmp_path):
    """The uninterrupted run's checkpoint 4, alone in a run directory of its own (a run of 2 workers that
    stopped there), resumed by `python -m pretrain --resume` on 1 worker, ends on its step 12."""
    import shutil

    from pretrain.__main__ import main as cli
    from pretrain.run_dir import CONFIG_FILE, checkpoint_dir_name
    from pretrain.train import launch

    plain_dir = launch(run_cfg(shards, tmp_path / "a")).run_dir
    plain = ck.load_checkpoint(plain_dir)
    assert len(plain["data_position"]) == len(plain["rng"]) == 4  # one a virtual shard
    assert plain["data_position"] == [{"epoch": 2, "batch": 2}] * 4

    first = tmp_path / "b" / "vs-stopped"
    first.mkdir(parents=True)
    shutil.copy(plain_dir / CONFIG_FILE, first / CONFIG_FILE)
    shutil.copytree(plain_dir / checkpoint_dir_name(4), first / checkpoint_dir_name(4))
    assert cli(["--resume", str(first), "train.num_workers=1", "train.steps=12"]) == 0
    resumed = ck.load_checkpoint(first)
    assert resumed["config"]["data"]["virtual_shards"] == 4 and resumed["config"]["train"]["num_workers"] == 1
    assert resumed["step"] == 12 and resumed["data_position"] == plain["data_position"]
    a = {**plain["encoder"], **plain["task"]}
    b = {**resumed["encoder"], **resumed["task"]}
    assert relative_gap(a, b) < 1e-6


def test_a_worker_count_that_does_not_divide_the_virtual_shards_is_one_line(shards, tmp_path):
    from pretrain import preflight

    with pytest.raises(ConfigError, match=r"train.num_workers=3 does not divide data.virtual_shards=4 .*\[1, 2, 4\]"):
        preflight.check(run_cfg(shards, tmp_path, "train.num_workers=3"), None)
    with pytest.raises(ConfigError, match="data.virtual_shards must be >= 1"):
        preflight.check(run_cfg(shards, tmp_path, "data.virtual_shards=0"), None)


def test_elastic_policy_runs_the_largest_divisor_of_the_virtual_shards_the_cluster_holds():
    """Ray Train's elastic policy counts the workers the reserved resources hold (whole CPUs per node);
    the run's policy rounds that down to a divisor of V, and the launcher asks for (min, max) workers."""
    from ray.train import ScalingConfig

    from pretrain.elastic import DivisorScalingPolicy
    from pretrain.train import worker_range

    policy = DivisorScalingPolicy(ScalingConfig(num_workers=(1, 4), resources_per_worker={"CPU": 2}), 4)
    held = {(1, 1): 0, (2, 1): 1, (2, 2): 2, (4, 3): 2, (4, 2): 2, (4, 4): 4, (20, 20): 4}  # CPUs a node -> W
    for (a, b), workers in held.items():
        assert policy._count_possible_workers({"a": {"CPU": a}, "b": {"CPU": b}}) == workers, (a, b)
    six = DivisorScalingPolicy(ScalingConfig(num_workers=(2, 6), resources_per_worker={"CPU": 1}), 6)
    assert six._count_possible_workers({"a": {"CPU": 5}}) == 3 and six._count_possible_workers({"a": {"CPU": 1}}) == 1
    cfg = load_config(None, ["data.shards=unused", "train.num_workers=4", "data.virtual_shards=8"])
    assert worker_range(cfg) == 4
    assert worker_range(load_config(None, ["data.shards=unused", "train.num_workers=4", "train.min_workers=2"])) == (2, 4)


def test_the_trainer_installs_the_sigterm_notice_and_starts_no_dataset_manager():
    """Every worker group start runs the trainer's callbacks: SIGTERM as a notice on each worker, and
    not Ray Data's, which would start a dataset-manager actor (a process) for a run given no Ray Dataset."""
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from pretrain.elastic import ShardTrainer, SigtermAsNotice

    trainer = ShardTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=(1, 2)), virtual_shards=2)
    callbacks = trainer._create_default_callbacks()
    assert any(isinstance(c, SigtermAsNotice) for c in callbacks)
    assert not any(isinstance(c, DatasetsCallback) for c in callbacks)



def test_a_workers_loader_serves_its_shards_in_lockstep_with_or_without_loader_processes(shards, tmp_path):
    """Worker 1 of 2 runs shards 2 and 3 of 4: one loader yields both shards' batches each step, each the
    batch its own stream (rank v of V) gives, across an epoch boundary and from a resume position, with 0
    or 2 loader processes."""
    from pretrain.train import batch_stream, open_loader

    for workers in (0, 2):  # the loader processes deal out the batches: their number is part of the order
        cfg = run_cfg(shards, tmp_path, f"data.loader_workers={workers}")
        own = [[b["images"] for _, b in zip(range(7), open_loader(cfg, None, v, 4, 0, 0))] for v in (2, 3)]
        stream = batch_stream(cfg, None, range(2, 4), 4, {"epoch": 0, "batch": 0})
        for i in range(7):
            batches, position = next(stream)
            assert len(batches) == 2 and position == {"epoch": (i + 1) // 6, "batch": i % 5 + 1 if i < 5 else i - 4}
            for j in range(2):
                assert torch.equal(batches[j]["images"], own[j][i]), (workers, i, j)
        resumed, _ = next(batch_stream(cfg, None, range(2, 4), 4, {"epoch": 1, "batch": 1}))
        assert all(torch.equal(resumed[j]["images"], own[j][6]) for j in range(2))
