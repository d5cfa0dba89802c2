"""Evaluation on the device: ``eval.linear``'s extraction on CUDA gives the CPU's features (full fp32)
with the encoder left frozen, kNN (faiss) on those features gives the CPU's accuracies, and the linear
probe reads the device no more often on CUDA than on the CPU (counted). The checkpoint is an untrained
one (its features are what extraction is checked on, not what they are worth)."""
from __future__ import annotations

import time

import pytest
import torch

from eval.knn import knn_accuracy
from eval.linear import prepare_features, verify_encoder_unchanged
from eval.probe import train_linear_probe
from pretrain.checkpoint import capture_rng, save_checkpoint
from pretrain.run_dir import checkpoint_dir_name
from pretrain.config import load_config, to_plain
from pretrain.train import build_optimizers, build_task_from_config, permutations_of
from tests.gpu.setting import jigsaw_overrides
from tests.pretrain.test_gpu_path import HostSyncCounter

pytestmark = pytest.mark.gpu


def test_extraction_on_the_device_matches_the_cpu_and_the_probe_reads_are_counted(gpu_shards, tmp_path, facts):
    cfg = load_config(None, jigsaw_overrides(gpu_shards))
    torch.manual_seed(0)
    permutations = permutations_of(cfg)
    task = build_task_from_config(cfg, permutations)
    main_opt, eta_opt = build_optimizers(cfg, task)
    run = tmp_path / "run"
    save_checkpoint(run / checkpoint_dir_name(1), step=1, config=to_plain(cfg), task=task, optimizer=main_opt,
                    eta_optimizer=eta_opt, rng=[capture_rng()], data_position=[{"epoch": 0, "batch": 0}],
                    permutations=permutations)

    t0 = time.perf_counter()
    gpu = prepare_features(run, gpu_shards, cache_dir=None, device="cuda", progress=False, keep_encoder=True)
    facts["extract_cuda_s"] = round(time.perf_counter() - t0, 2)
    assert next(gpu["encoder"].parameters()).device.type == "cuda"
    verify_encoder_unchanged(gpu["encoder"], gpu["reference"])  # prepare_features checked it too
    cpu = prepare_features(run, gpu_shards, cache_dir=None, device="cpu", num_workers=0, progress=False)
    for split in ("train", "test"):
        (f_gpu, y_gpu), (f_cpu, y_cpu) = gpu[split], cpu[split]
        assert f_gpu.device.type == "cpu" and f_gpu.shape == f_cpu.shape == (len(y_cpu), 2048)
        assert torch.equal(y_gpu, y_cpu)
        difference = ((f_gpu - f_cpu).abs().max() / f_cpu.abs().max()).item()
        facts[f"{split}_max_relative_difference"] = difference
        assert difference < 1e-3, split

    knn = knn_accuracy(*gpu["train"], *gpu["test"], num_classes=3, k=5)
    facts["knn_top1"] = knn["top1"]
    assert knn == knn_accuracy(*cpu["train"], *cpu["test"], num_classes=3, k=5)  # the same neighbours' votes

    reads = {}
    for device in ("cuda", "cpu"):
        with HostSyncCounter() as counter:
            result = train_linear_probe(*gpu["train"], *gpu["test"], 3, epochs=2, seed=0, batch_size=8,
                                        device=device, progress=False)
        reads[device] = len(counter.ops)
        facts[f"probe_top1_{device}"] = result["top1"]
    facts["probe_host_reads"] = reads
    assert reads["cuda"] == reads["cpu"] > 0
