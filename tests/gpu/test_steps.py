"""The training step on the device, in this process: it reads nothing back from the device (the counter of
``tests/pretrain/test_gpu_path.py`` and CUDA's own sync flags agree), and the compiled step (CUDA
graphs) compiles during warm-up only."""
from __future__ import annotations

import math

import pytest
import torch

from pretrain.config import load_config
from pretrain.plan import example_batch
from pretrain.train import (build_optimizers, build_task_from_config, compile_model, permutations_of, to_device,
                            train_step)
from tests.gpu.setting import CudaSyncCounter, jigsaw_overrides
from tests.pretrain.test_gpu_path import HostSyncCounter

pytestmark = pytest.mark.gpu


def device_task(cfg):
    """The task of ``cfg`` on CUDA as the loop places it (channels_last), its optimisers and permutations."""
    torch.manual_seed(0)
    permutations = permutations_of(cfg)
    task = build_task_from_config(cfg, permutations).cuda().to(memory_format=torch.channels_last)
    main_opt, eta_opt = build_optimizers(cfg, task)
    task.train()
    return task, main_opt, eta_opt, permutations


def test_a_step_on_the_device_reads_nothing_back(facts):
    """Four steps with the shipped GPU options; from the second on (cuDNN's kernel search is done), no
    read of the device and no CUDA sync a step: the finite check stays on the device until a report."""
    cfg = load_config(None, jigsaw_overrides("/nonexistent"))
    task, main_opt, eta_opt, permutations = device_task(cfg)
    assert all(g["fused"] for g in main_opt.param_groups + eta_opt.param_groups)
    torch.backends.cudnn.benchmark = True  # as the loop sets it
    reads, syncs, losses = [], [], []
    try:
        for step in range(4):
            batch = to_device(task.host_prepare(example_batch(cfg, permutations, seed=step)), torch.device("cuda"))
            with HostSyncCounter() as counter, CudaSyncCounter() as cuda_syncs:
                out = train_step(task, task, batch, step, main_opt, eta_opt, bf16=True)
            reads.append(len(counter.ops))
            syncs.append(cuda_syncs.count)
            losses.append(out["metrics"]["loss"].item())
    finally:
        torch.backends.cudnn.benchmark = False
    facts.update({"host_reads_per_step": reads, "cuda_syncs_per_step": syncs, "losses": losses})
    assert out["flags"].read().nonfinite is None
    assert reads == [0, 0, 0, 0]
    assert syncs[1:] == [0, 0, 0]
    assert all(math.isfinite(x) for x in losses)


def test_the_compiled_step_does_not_recompile_after_warm_up(facts):
    """``train.compile`` on CUDA (mode reduce-overhead: CUDA graphs): after three warm-up steps, five
    more steps add no frame, no graph and no recompilation (``torch._dynamo``'s counters)."""
    from torch._dynamo.utils import counters

    cfg = load_config(None, jigsaw_overrides("/nonexistent", "train.compile=true"))
    task, main_opt, eta_opt, permutations = device_task(cfg)
    torch._dynamo.reset()
    counters.clear()
    model = compile_model(task, torch.device("cuda"))

    def steps(first: int, n: int) -> list[float]:
        losses = []
        for step in range(first, first + n):
            batch = to_device(task.host_prepare(example_batch(cfg, permutations, seed=step)), torch.device("cuda"))
            out = train_step(model, task, batch, step, main_opt, eta_opt, bf16=True)
            assert out["flags"].read().nonfinite is None, step
            # now: a CUDA graph's output is overwritten by its next replay (the loop sums it at once too)
            losses.append(out["metrics"]["loss"].item())
        return losses

    def snapshot() -> dict:
        return {"frames": dict(counters["frames"]), "unique_graphs": counters["stats"]["unique_graphs"],
                "recompiles": sum(counters["recompiles"].values()) if "recompiles" in counters else 0}

    warm = steps(0, 3)
    after_warm_up = snapshot()
    later = steps(3, 5)
    after = snapshot()
    facts.update({"counters_after_warm_up": after_warm_up, "counters_after_8_steps": after,
                  "inductor": {k: v for k, v in counters["inductor"].items() if "cudagraph" in k},
                  "losses": warm + later})
    assert after_warm_up["unique_graphs"] >= 1
    assert after == after_warm_up
    assert all(math.isfinite(x) for x in warm + later)
