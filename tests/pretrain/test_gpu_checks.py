"""The GPU path's first contact with a cluster, checked on a CPU with ``torch.cuda`` faked
(tests/support/fake_cuda.py): a resume restores the rank's own CUDA RNG state, and a GPU that cannot
run the config (no CUDA seen by torch, bf16 without Ampere) is named in one line."""
from __future__ import annotations

import torch

from pretrain import checkpoint as ck
from tests.support.fake_cuda import FakeCuda


def test_resume_restores_the_rank_s_own_cuda_rng_state_on_a_node_with_fewer_gpus(monkeypatch):
    # rank on device 3 of an 8-GPU node (Ray shows every worker all of the node's GPUs)
    node = FakeCuda(monkeypatch, count=8, current=3)
    state = ck.capture_rng()
    assert torch.equal(state["cuda"], node.states[3])
    # the restart lands on device 1 of a 2-GPU node: it gets device 3's state, the others are untouched
    other = FakeCuda(monkeypatch, count=2, current=1)
    untouched = other.states[0].clone()
    ck.restore_rng(state)
    assert torch.equal(other.states[1], node.states[3]) and torch.equal(other.states[0], untouched)


def test_bf16_on_a_gpu_without_it_is_one_line_before_the_workers_start(monkeypatch):
    from pretrain import gpu

    FakeCuda(monkeypatch, capability=(7, 5), name="Tesla T4")  # is_bf16_supported() says yes here (emulation)
    monkeypatch.setattr(gpu, "driver_version", lambda: "550.54.15")
    (line,) = gpu.problems(gpu.facts(), gpus=1, bf16=True)
    assert line.startswith("train.bf16=true needs compute capability >= 8.0") and "Tesla T4 is 7.5" in line
    assert gpu.problems(gpu.facts(), gpus=1, bf16=False) == []
    FakeCuda(monkeypatch, capability=(8, 6), name="NVIDIA A10G")
    assert gpu.problems(gpu.facts(), gpus=1, bf16=True) == []


def test_a_gpu_torch_cannot_see_is_named_with_the_driver_and_the_torch_cuda_build(monkeypatch, tmp_path):
    from pretrain import gpu

    proc = tmp_path / "version"  # the NVIDIA kernel module's /proc/driver/nvidia/version
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
                    "GCC version:  gcc version 12.3.0\n")
    assert gpu.driver_version(proc) == "550.54.15"
    assert gpu.driver_version(tmp_path / "absent") is None
    FakeCuda(monkeypatch, available=False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(gpu, "driver_version", lambda: "550.54.15")
    (line,) = gpu.problems(gpu.facts(), gpus=1, bf16=False)
    assert "torch.cuda.is_available() is false: NVIDIA driver 550.54.15" in line
    assert "built for CUDA 13.0" in line and "needs driver >= 580.65.06" in line and gpu.LEGACY_INDEX in line
    monkeypatch.setattr(torch.version, "cuda", "12.6")  # a build the driver runs: the GPU is hidden instead
    (line,) = gpu.problems(gpu.facts(), gpus=1, bf16=False)
    assert "docker --gpus all" in line
    assert gpu.problems(gpu.facts(), gpus=0, bf16=False) == []  # no GPU given: nothing to say


def test_tf32_stays_off_for_the_float32_matmuls_of_the_witnesses():
    from pretrain.train import cuda_math

    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        cuda_math()  # what a rank on a GPU sets
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_ddp_gradients_stay_views_into_its_buckets_across_steps(tmp_path):
    """zero_grad(set_to_none=True) would drop DDP's bucket views: each backward would then allocate every
    gradient anew and DDP copy it into its bucket. A hook before each gradient lands sees it still there."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    from pretrain.plan import example_batch
    from pretrain.train import build_optimizers, build_task_from_config, train_step
    from tests.support.run_states import tiny_cfg

    cfg = tiny_cfg("infomax", "eta-mine")
    task = build_task_from_config(cfg, None)
    main_opt, eta_opt = build_optimizers(cfg, task)
    tdist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path}/pg")
    try:
        model = DistributedDataParallel(task, gradient_as_bucket_view=True)
        for step in range(2):  # DDP makes the gradients bucket views in the first backward
            train_step(model, task, task.host_prepare(example_batch(cfg, None, seed=step)), step, main_opt, eta_opt)
        views = {n: p.grad.data_ptr() for n, p in task.named_parameters()}
        dropped = []
        for n, p in task.named_parameters():
            p.register_hook(lambda g, n=n, p=p: dropped.append(n) if p.grad is None else None)
        train_step(model, task, task.host_prepare(example_batch(cfg, None, seed=2)), 2, main_opt, eta_opt)
        assert dropped == []
        assert {n: p.grad.data_ptr() for n, p in task.named_parameters()} == views
    finally:
        tdist.destroy_process_group()


def test_sync_batchnorm_warns_of_its_host_syncs():
    from pretrain.preflight import warn_sync_batchnorm
    from tests.support.run_states import tiny_cfg

    import pytest

    with pytest.warns(UserWarning, match=r"train.sync_batchnorm=true: \d+ BatchNorm layers, each a host sync"):
        warn_sync_batchnorm(tiny_cfg("infomax", "eta-mine", "train.sync_batchnorm=true"))


def test_the_doctor_s_node_row_names_each_gpu_problem(monkeypatch, tmp_path):
    """cluster.doctor's per-node task on a faked 1-GPU T4 node that Ray says has 2 GPUs, asked for bf16."""
    from cluster.doctor import node_report
    from pretrain import gpu

    FakeCuda(monkeypatch, count=1, capability=(7, 5), name="Tesla T4")
    monkeypatch.setattr(gpu, "driver_version", lambda: "550.54.15")
    row = node_report(None, "train", str(tmp_path / "runs"), str(tmp_path / "runs"), bf16=True, gpus=2)
    assert (row["devices"], row["driver"], row["capability"], row["run_root_write"]) == (1, "550.54.15", [7, 5], True)
    assert row["shards_read"] is None and row["free_disk_gb"] > 0
    gpu_lines = [p for p in row["problems"] if "GB free" not in p]
    assert len(gpu_lines) == 2
    assert gpu_lines[0].startswith("Ray gives this node 2 GPU(s) but torch sees 1")
    assert gpu_lines[1].startswith("train.bf16=true needs compute capability >= 8.0")
