"""Whole-run wall clock: a plain PyTorch loop against our Ray Train loop; and achieved FLOP/s.

(a) a single-process loop and (b) ``pretrain.train.launch`` with one Ray worker run the same task,
model, data stream and ``train_step`` for ``--steps`` steps, both writing TensorBoard and
``metrics.jsonl`` after every step (``train.report_every=1``, the worst case for reports) and a
checkpoint every ``--checkpoint-every`` steps and at the end. Both use ``--threads`` torch threads;
the benchmark sets no Ray environment variable (the launcher's own settings apply). Each run is
split by the wall-clock times of its TensorBoard events: start-up (launch to the end of step 1),
steps 2.. to the last (every report and the mid-run checkpoints), and the wind-down (the final
checkpoint, until the result is back). The ratio a/b of steps + wind-down is the figure (goal
>= 0.95); start-up is reported apart. ``--repeats`` alternates the loops (a, b, a, b) and reports
medians, so load from other jobs that comes and goes hits both. Each plain run is a fresh Python
process with the environment Ray gives its worker (``OMP_NUM_THREADS`` = the worker's CPUs unless
already set), as the Ray worker is one: without it the plain loop ran ~2% slower than the same loop
in Ray, flattering Ray.

Then the achieved FLOP/s of a ResNet50 jigsaw step (forward + backward + Adam, FLOPs counted by
``torch.utils.flop_counter``) against a plain matmul (2048² fp32, 1024² bf16), in fp32 and bf16 autocast.

    nice -n 10 python benchmarks/train_step.py                       # small defaults for 2 CPU cores
    nice -n 10 python benchmarks/train_step.py --encoder resnet50 --images 10 --perms 16 --steps 40
    python benchmarks/train_step.py --quick      # seconds: every part runs, the figures mean nothing (tests)
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_shards(work: Path, n_images: int = 64) -> Path:
    """Random 128x128 RGB images in 2 classes, as JPEG shards."""
    from data_prep.manifest import MANIFEST_NAME
    from data_prep.sample_images import random_sources
    from data_prep.shard_writer import EncodeOptions, build_dataset

    if not (work / "shards" / MANIFEST_NAME).is_file():
        build_dataset(work / "shards", "random", {"images": n_images}, *random_sources(n_images, 2, 128),
                      EncodeOptions("jpg"), shard_size=16, progress=False)
    return work / "shards"


def bench_config(args, shards: Path, root: Path):
    from pretrain.config import load_config

    return load_config(None, [
        f"data.shards={shards}", f"run.root={root}", "run.name=bench", "task.kind=jigsaw-ce",
        f"model.encoder={args.encoder}", f"data.images_per_batch={args.images}", f"data.perms_per_image={args.perms}",
        f"data.loader_workers={args.loader_workers}", "train.num_workers=1",
        f"train.threads_per_worker={args.threads}", f"train.steps={args.steps}", "train.report_every=1",
        f"train.checkpoint_every={args.checkpoint_every}", f"train.bf16={str(args.bf16).lower()}"])


def event_times(run_dir: Path) -> list[float]:
    """Wall-clock times (time.time()) at which rank 0 logged the loss of steps 1, 2, ... to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb")).Reload()
    return [e.wall_time for e in sorted(events.Scalars("loss"), key=lambda e: e.step)]


def split(started: float, times: list[float], ended: float, steps: int) -> dict:
    """Start-up (to step 1's log), the steps after it (every report and mid-run checkpoint), the
    wind-down (last log to the result: final checkpoint, stopping), and their sums."""
    return {"startup_s": times[0] - started, "steps_s": times[-1] - times[0], "winddown_s": ended - times[-1],
            "after_startup_s": ended - times[0], "steps_per_s": (steps - 1) / (times[-1] - times[0]),
            "total_s": ended - started}


def median_run(runs: list[dict]) -> dict:
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]}


def plain_loop(cfg, run_dir: Path) -> dict:
    """(a): the Ray loop's pieces in this process, no Ray, no DDP: same steps, logs and checkpoints."""
    from torch.utils.tensorboard import SummaryWriter

    from storage import LocalMirror
    from pretrain.checkpoint import capture_rng, save_checkpoint
    from pretrain.run_dir import checkpoint_dir_name
    from pretrain.config import to_plain
    from pretrain.train import (MetricWindow, batch_size_of, batch_stream, build_optimizers, build_task_from_config,
                                log_rank0, permutations_of, train_step)

    started = time.time()
    run_dir.mkdir(parents=True)
    torch.set_num_threads(cfg.train.threads_per_worker)  # as the Ray worker does
    torch.manual_seed(cfg.run.seed)
    perms = permutations_of(cfg)
    task = build_task_from_config(cfg, perms)
    main, eta = build_optimizers(cfg, task)
    task.train()
    writer = SummaryWriter(str(run_dir / "tb"))
    logs = LocalMirror(run_dir)  # what rank 0 writes metrics.jsonl into: the run directory itself here
    stream = batch_stream(cfg, perms, [0], 1, {"epoch": 0, "batch": 0})
    window, t_window = MetricWindow(), time.perf_counter()
    for step in range(1, cfg.train.steps + 1):
        t0 = time.perf_counter()
        (host_batch,), position = next(stream)
        batch = task.host_prepare(host_batch)
        window.data_s += time.perf_counter() - t0
        out = train_step(task, task, batch, step - 1, main, eta, bf16=cfg.train.bf16)
        window.add(out["metrics"], samples=batch_size_of(batch))
        metrics = {**window.reduce(1, time.perf_counter() - t_window), "step": step}
        log_rank0(writer, logs, metrics, step, host_batch, cfg)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            save_checkpoint(run_dir / checkpoint_dir_name(step), step=step, config=to_plain(cfg), task=task,
                            optimizer=main, eta_optimizer=eta, rng=[capture_rng()], data_position=[position],
                            permutations=perms)
        window, t_window = MetricWindow(), time.perf_counter()
    writer.close()
    return split(started, event_times(run_dir), time.time(), cfg.train.steps)


# run in a fresh interpreter: import this file, run (a) on the plain config, print its figures
_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("train_step_bench", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from pretrain.config import from_plain
print(json.dumps(bench.plain_loop(from_plain(json.loads(sys.argv[2])), bench.Path(sys.argv[3]))))
"""


def plain_loop_in_process(cfg, run_dir: Path) -> dict:
    """(a) in a new process whose environment is what Ray gives its worker process."""
    from pretrain.config import to_plain
    from pretrain.train import worker_cpus

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(worker_cpus(cfg)))  # Ray's setting: the CPUs the rank reserves
    out = subprocess.run([sys.executable, "-c", _CHILD, str(Path(__file__).resolve()), json.dumps(to_plain(cfg)),
                          str(run_dir)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the plain loop failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ray_loop(cfg) -> dict:
    """(b): ``launch`` with one worker, from the call to the result (Ray already running)."""
    import ray

    from pretrain.train import launch

    from pretrain import preflight

    own = not ray.is_initialized()  # a caller's Ray (the tests') is used as it is
    t0 = time.time()
    preflight.init_ray()  # the local Ray `python -m pretrain` starts, with Ray's defaults
    ray_init_s = time.time() - t0
    try:
        started = time.time()
        run = launch(cfg).run_dir
        ended = time.time()
    finally:
        if own:
            ray.shutdown()
    return {"ray_init_s": ray_init_s, **split(started, event_times(run), ended, cfg.train.steps)}


def matmul_flops(dtype: torch.dtype, n: int = 2048, budget_s: float = 3.0) -> float:
    """FLOP/s of an n x n matmul in ``dtype``, repeated for about ``budget_s`` seconds."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = time.perf_counter()
    a @ b
    reps, first = 0, time.perf_counter() - t
    t = time.perf_counter()
    while reps == 0 or (time.perf_counter() - t) + first < budget_s:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t)


def jigsaw_step_flops(puzzles: int, bf16: bool, reps: int, encoder: str = "resnet50") -> tuple[float, float]:
    """(FLOPs of one jigsaw-CE step of ``encoder`` on ``puzzles`` puzzles, achieved FLOP/s)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.models import build_encoder
    from pretrain.tasks import build_task

    torch.manual_seed(0)
    task = build_task("jigsaw-ce", build_encoder(encoder))
    task = task.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(task.parameters(), lr=1e-4)
    batch = {"patches": torch.randn(puzzles, 9, 3, 64, 64), "perm_index": torch.randint(0, 100, (puzzles,))}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    t = time.perf_counter()
    for _ in range(reps):
        step()
    return flops, flops * reps / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="resnet18", help="timm encoder of the a/b comparison")
    p.add_argument("--images", type=int, default=2, help="images per batch (jigsaw)")
    p.add_argument("--perms", type=int, default=4, help="permutations per image")
    p.add_argument("--steps", type=int, default=60, help="training steps of each run")
    p.add_argument("--checkpoint-every", type=int, default=30, help="a checkpoint every N steps (and at the end)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop (medians are reported)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in both loops (= Ray worker CPUs)")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers in both loops")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the a/b comparison")
    p.add_argument("--flops-puzzles", type=int, default=4, help="puzzles per ResNet50 step for the FLOP/s part")
    p.add_argument("--flops-reps", type=int, default=3)
    p.add_argument("--skip-flops", action="store_true", help="only the a/b comparison")
    p.add_argument("--skip-ab", action="store_true", help="only the FLOP/s part")
    p.add_argument("--work", default=None, help="folder for shards and runs (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in seconds: 2 steps, 2 puzzles, small matmuls, resnet18 in the FLOP/s part")
    args = p.parse_args(argv)
    from pretrain.preflight import local_ray_on_loopback

    local_ray_on_loopback()  # before Ray is imported, as `python -m pretrain` does
    # (matmul side fp32, bf16; seconds a matmul is repeated; encoder of the FLOP/s part)
    flops_setup = (2048, 1024, 3.0, "resnet50")
    if args.quick:
        args.steps, args.checkpoint_every, args.flops_puzzles, args.flops_reps, args.repeats = 3, 2, 2, 1, 1  # 2: batch norm needs more than one
        flops_setup = (256, 64, 0.05, "resnet18")
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-train-"))
    if not args.work:  # gigabytes of runs and shards: gone when the benchmark exits
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    shards = make_shards(work) if not args.skip_ab else work
    cfg = bench_config(args, shards, work / "runs")

    out = {"setup": {k: getattr(args, k) for k in ("encoder", "images", "perms", "steps", "checkpoint_every",
                                                    "threads", "loader_workers", "bf16")}}
    if not args.skip_ab:
        runs_a, runs_b = [], []
        for r in range(args.repeats):  # a, b, a, b, ...: load that drifts hits both alike
            runs_a.append(plain_loop_in_process(cfg, work / "runs" / f"plain{r}"))
            runs_b.append(ray_loop(cfg))
        a, b = median_run(runs_a), median_run(runs_b)
        ratio, steps_ratio = a["after_startup_s"] / b["after_startup_s"], a["steps_s"] / b["steps_s"]
        pairs = [x["after_startup_s"] / y["after_startup_s"] for x, y in zip(runs_a, runs_b)]
        out.update({"plain": a, "ray_1_worker": b, "plain_runs": runs_a, "ray_runs": runs_b,
                    "ratio_a_over_b_after_startup": ratio, "ratio_a_over_b_steps": steps_ratio,
                    "ratio_after_startup_of_each_pair": pairs})
        print(f"{args.encoder}, {args.images * args.perms} puzzles/step, {args.steps} steps, report every step, "
              f"checkpoint every {args.checkpoint_every}, {args.threads} threads, median of {args.repeats} "
              f"alternating runs:\n"
              f"  (a) plain loop: start-up {a['startup_s']:.2f} s; steps 2-{args.steps} {a['steps_s']:.2f} s "
              f"({a['steps_per_s']:.3f} steps/s); wind-down {a['winddown_s']:.2f} s\n"
              f"  (b) Ray loop:   start-up {b['startup_s']:.2f} s (+ ray.init {b['ray_init_s']:.2f} s); steps 2-{args.steps} "
              f"{b['steps_s']:.2f} s ({b['steps_per_s']:.3f} steps/s); wind-down {b['winddown_s']:.2f} s\n"
              f"  steps a/b = {steps_ratio:.3f}; after start-up (steps + wind-down) a/b = {ratio:.3f} (goal >= 0.95); "
              f"pairs {min(pairs):.3f}-{max(pairs):.3f}",
              flush=True)
    if not args.skip_flops:
        # bf16 matmul runs far slower than fp32 on CPUs without a bf16 GEMM path: a smaller n keeps it short
        n32, n16, budget_s, flops_encoder = flops_setup
        for name, dtype, bf16, n in (("fp32", torch.float32, False, n32), ("bf16", torch.bfloat16, True, n16)):
            mm = matmul_flops(dtype, n, budget_s)
            flops, rate = jigsaw_step_flops(args.flops_puzzles, bf16, args.flops_reps, flops_encoder)
            out[f"flops_{name}"] = {"matmul_n": n, "matmul_flop_s": mm, "resnet50_step_flops": flops, "resnet50_flop_s": rate,
                                    "fraction_of_matmul": rate / mm}
            print(f"{name}: matmul {n}^2 {mm / 1e9:.1f} GFLOP/s; {flops_encoder} jigsaw step "
                  f"({args.flops_puzzles} puzzles, {flops / 1e9:.1f} GFLOP) {rate / 1e9:.1f} GFLOP/s "
                  f"= {rate / mm:.0%} of matmul", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
