"""Pretraining on the device through Ray Train, as ``python -m pretrain`` runs it: jigsaw-MI η-MINE on
ResNet50 with the shipped GPU options, a report every 5 steps and a checkpoint every 20; a worker
SIGKILLed mid-run and resumed ends bit for bit where the uninterrupted run ends; and a second run with
``train.compile=true`` (CUDA graphs) that recompiles nothing (its worker's ``TORCH_LOGS``).

These runs take one rank a GPU (NCCL). η's agreement across ranks is also checked where the machine
has one GPU: two ranks on half of it each (``train.gpus_per_worker=0.5``; their process group is gloo,
as NCCL refuses two ranks on one device, "Duplicate GPU detected").
The uninterrupted and the killed run set ``train.deterministic`` (cuDNN's and cuBLAS's deterministic
kernels); the compiled run keeps the shipped setting (cuDNN's autotuning).
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time

import psutil
import pytest
import torch

from pretrain import checkpoint as ck
from pretrain.config import load_config
from pretrain.train import launch
from tests.gpu.setting import jigsaw_overrides
from tests.support.run_states import assert_same_state, read_metrics

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]
STEPS, REPORT, CHECKPOINT = 60, 5, 20
WORKERS = max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def run_cfg(shards, root, *extra):
    return load_config(None, jigsaw_overrides(
        shards, f"run.root={root}", "run.name=gpu", "train.use_gpu=true", f"train.num_workers={WORKERS}",
        "data.loader_workers=1", f"train.steps={STEPS}", f"train.report_every={REPORT}",
        f"train.checkpoint_every={CHECKPOINT}", "train.max_failures=1", *extra))


def check_metrics(run_dir, facts: dict, steps: int) -> list[dict]:
    """Reports at every REPORT steps up to ``steps``: finite, and η the same on every rank."""
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics][-1] == steps
    for m in metrics:
        for key in ("loss", "mi", "eta", "samples_per_s", "data_wait_fraction"):
            assert math.isfinite(m[key]), (m["step"], key)
        assert [m[f"eta/rank{r}"] for r in range(WORKERS)] == [m["eta"]] * WORKERS, m["step"]
    facts.update({"ranks": WORKERS, "steps": [m["step"] for m in metrics], "loss": [m["loss"] for m in metrics],
                  "eta": [m["eta"] for m in metrics], "samples_per_s": [m["samples_per_s"] for m in metrics],
                  "data_wait_fraction": [m["data_wait_fraction"] for m in metrics]})
    return metrics


@pytest.fixture(scope="module")
def reference(ray_session, gpu_shards, tmp_path_factory):
    """The uninterrupted deterministic run: (run directory, seconds)."""
    t0 = time.perf_counter()
    run = launch(run_cfg(gpu_shards, tmp_path_factory.mktemp("reference"), "train.deterministic=true")).run_dir
    return run, time.perf_counter() - t0


def test_trains_on_the_device_with_reports_and_checkpoints(reference, facts):
    run, seconds = reference
    facts["seconds"] = round(seconds, 1)
    metrics = check_metrics(run, facts, STEPS)
    assert metrics[-1]["eta"] != metrics[0]["eta"]  # η is trained
    done = sorted(ck.step_of(p) for p in run.glob("checkpoint_0*"))
    assert done == list(range(CHECKPOINT, STEPS + 1, CHECKPOINT))
    payload = ck.load_checkpoint(run)
    assert payload["step"] == STEPS and all(torch.isfinite(v).all() for v in payload["encoder"].values()
                                            if v.is_floating_point())


def worker_processes() -> list[psutil.Process]:
    """The Ray Train workers of this test session's Ray (descendants of this process)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name().startswith("ray::RayTrainWorker"):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def reported_step(run_dir) -> int:
    """The step of the last report in ``run_dir/metrics.jsonl`` (0 before the first; a line rank 0 is
    writing at this moment is left out)."""
    path, step = run_dir / "metrics.jsonl", 0
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                step = json.loads(line)["step"]
            except ValueError:
                pass
    return step


def kill_a_worker_after(run_dir, step: int, killed: dict, stop: threading.Event) -> None:
    """Once ``run_dir``'s metrics reach ``step``, SIGKILL the last Ray Train worker; ``killed`` gets the
    step the metrics had reached and the process id."""
    while not stop.is_set():
        reached = reported_step(run_dir)
        workers = worker_processes()
        if reached >= step and workers:
            victim = max(workers, key=lambda p: p.pid)
            victim.send_signal(signal.SIGKILL)
            killed.update({"at_step": reached, "pid": victim.pid})
            return
        time.sleep(0.02)


def test_a_worker_killed_mid_run_resumes_to_the_uninterrupted_weights(reference, gpu_shards, tmp_path, facts):
    """SIGKILL of a worker after checkpoint 20 is written; Ray Train restarts the group from it, and the
    final checkpoint equals the uninterrupted run's: weights, η, Adam's moments, data position."""
    run_dir = tmp_path / "killed"
    killed, stop = {}, threading.Event()
    killer = threading.Thread(target=kill_a_worker_after, args=(run_dir, CHECKPOINT + REPORT, killed, stop))
    killer.start()
    try:
        launch(run_cfg(gpu_shards, tmp_path, "train.deterministic=true"), run_dir=run_dir)
    finally:
        stop.set()
        killer.join()
    facts["killed"] = killed
    assert killed, "the run ended before a worker could be killed"
    assert killed["at_step"] < 2 * CHECKPOINT, killed  # before the next checkpoint: the restart redoes steps
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps.count(CHECKPOINT + REPORT) == 2, steps  # reported, lost with the worker, redone after the restart
    check_metrics(run_dir, facts, STEPS)
    assert_same_state(ck.load_checkpoint(run_dir), ck.load_checkpoint(reference[0]))


def test_trains_compiled_on_the_device(ray_session, gpu_shards, tmp_path, facts):
    """``train.compile=true`` (inductor, CUDA graphs), cuDNN autotuning as shipped: 20 steps, and the
    worker's log shows dynamo tracing and no recompilation (the only compiling run of the session)."""
    t0 = time.perf_counter()
    run = launch(run_cfg(gpu_shards, tmp_path, "train.compile=true", "train.steps=20")).run_dir
    facts["seconds"] = round(time.perf_counter() - t0, 1)
    check_metrics(run, facts, 20)
    assert ck.load_checkpoint(run)["step"] == 20
    logs = "".join(p.read_text(errors="replace") for p in ray_session.glob("worker-*"))
    facts.update({"dynamo_traces": logs.count("torchdynamo start tracing"), "recompiles": logs.count("Recompiling function")})
    assert facts["dynamo_traces"] >= 1, f"no dynamo log in {ray_session}"
    assert facts["recompiles"] == 0


def test_two_ranks_sharing_the_gpu_keep_eta_identical(ray_session, gpu_shards, tmp_path, facts):
    """Two ranks on half a GPU each (gloo, DDP over the device's tensors): η is the same on both ranks
    at every report, and the losses are finite."""
    run = launch(load_config(None, jigsaw_overrides(
        gpu_shards, f"run.root={tmp_path}", "run.name=shared", "train.use_gpu=true", "train.num_workers=2",
        "train.gpus_per_worker=0.5", "data.loader_workers=1", "train.steps=10", "train.report_every=2",
        "train.checkpoint_every=10"))).run_dir
    metrics = read_metrics(run)
    facts.update({"steps": [m["step"] for m in metrics], "eta_rank0": [m["eta/rank0"] for m in metrics],
                  "eta_rank1": [m["eta/rank1"] for m in metrics], "loss": [m["loss"] for m in metrics]})
    assert [m["step"] for m in metrics] == [2, 4, 6, 8, 10]
    for m in metrics:
        assert m["eta/rank0"] == m["eta/rank1"] == m["eta"] and math.isfinite(m["loss"]), m["step"]
    assert metrics[-1]["eta"] != metrics[0]["eta"]
