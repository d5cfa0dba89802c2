"""Training-step throughput: a plain PyTorch loop against our Ray Train loop, and achieved FLOP/s.

(a) a single-process loop and (b) ``pretrain.train.launch`` with one Ray worker run the same task,
model, batch, data stream and ``train_step``; both use ``--threads`` torch threads. Prints steps/s
of each, the ratio b/a (goal >= 0.95), and the fraction of step time spent waiting for data. Then
the achieved FLOP/s of a ResNet50 jigsaw step (forward + backward + Adam, FLOPs counted by
``torch.utils.flop_counter``) against a plain matmul (2048² fp32, 1024² bf16), in fp32 and bf16 autocast.

    nice -n 10 python benchmarks/train_step.py                       # small defaults for 2 CPU cores
    nice -n 10 python benchmarks/train_step.py --encoder resnet50 --images 10 --perms 16 --steps 20
    python benchmarks/train_step.py --quick      # seconds: every part runs, the figures mean nothing (tests)

(b)'s steps/s comes from the loop's own report window after ``--steps`` warm-up steps, so it holds
the per-step cost of the Ray loop (DDP wrapper, metric bookkeeping, data) but not the ~0-2 s of each
``ray.train.report`` barrier, which a run pays once every ``train.report_every`` steps.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_shards(work: Path, n_images: int = 64) -> Path:
    """Random 128x128 RGB images in 2 classes, through the folder builder."""
    from data_prep.__main__ import main as data_prep_main

    out = work / "shards"
    if (out / "manifest.json").is_file():
        return out
    rng = np.random.default_rng(0)
    for i in range(n_images):
        d = work / "src" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    assert data_prep_main(["folder", "--src", str(work / "src"), "--out", str(out), "--shard-size", "16",
                           "--workers", "1", "--no-progress"]) == 0
    return out


def bench_config(args, shards: Path, root: Path, steps: int):
    from pretrain.config import load_config

    return load_config(None, [
        f"data.shards={shards}", f"run.root={root}", "run.name=bench", "task.kind=jigsaw-ce",
        f"model.encoder={args.encoder}", f"data.images_per_batch={args.images}", f"data.perms_per_image={args.perms}",
        f"data.loader_workers={args.loader_workers}", "train.num_workers=1",
        f"train.threads_per_worker={args.threads}", f"train.steps={steps}", f"train.report_every={args.steps}",
        f"train.checkpoint_every={steps}", f"train.bf16={str(args.bf16).lower()}"])


def plain_loop(cfg, warmup: int, steps: int) -> dict:
    """(a): the same pieces as the Ray loop, in this process, no Ray, no DDP."""
    from data_prep.jigsaw import permutation_set
    from pretrain.train import batch_stream, build_optimizers, build_task_from_config, train_step

    torch.manual_seed(cfg.run.seed)
    perms = torch.as_tensor(permutation_set(cfg.data.permutations, cfg.data.num_permutations)[0])
    task = build_task_from_config(cfg, perms)
    main, eta = build_optimizers(cfg, task)
    task.train()
    stream = batch_stream(cfg, perms, 0, 1, {"epoch": 0, "batch": 0})
    data_s = step_s = 0.0
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch, _ = next(stream)
        t1 = time.perf_counter()
        train_step(task, task, batch, step, main, eta, bf16=cfg.train.bf16)
        t2 = time.perf_counter()
        if step >= warmup:
            data_s, step_s = data_s + t1 - t0, step_s + t2 - t0
    return {"steps_per_s": steps / step_s, "data_wait_fraction": data_s / step_s}


def ray_loop(cfg, samples_per_step: int) -> dict:
    """(b): ``launch`` with one worker; the second report window is the measurement."""
    import ray

    from pretrain.train import launch

    own = not ray.is_initialized()  # a caller's Ray (the tests') is used as it is
    if own:
        tmp = tempfile.mkdtemp(prefix="rb")
        ray.init(num_cpus=cfg.train.threads_per_worker, _temp_dir=tmp, include_dashboard=False, log_to_driver=False)
    try:
        run = launch(cfg).run_dir
    finally:
        if own:
            ray.shutdown()
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    return {"steps_per_s": last["samples_per_s"] / samples_per_step, "data_wait_fraction": last["data_wait_fraction"]}


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
    p.add_argument("--steps", type=int, default=10, help="measured steps (after as many warm-up steps)")
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
    # (matmul side fp32, bf16; seconds a matmul is repeated; encoder of the FLOP/s part)
    flops_setup = (2048, 1024, 3.0, "resnet50")
    if args.quick:
        args.steps, args.flops_puzzles, args.flops_reps = 2, 2, 1  # 2: batch norm needs more than one
        flops_setup = (256, 64, 0.05, "resnet18")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-train-"))
    shards = make_shards(work) if not args.skip_ab else work
    cfg = bench_config(args, shards, work / "runs", 2 * args.steps)
    samples = args.images * args.perms

    out = {"setup": {k: getattr(args, k) for k in ("encoder", "images", "perms", "steps", "threads", "bf16")}}
    if not args.skip_ab:
        a = plain_loop(cfg, args.steps, args.steps)
        b = ray_loop(cfg, samples)
        out.update({"plain": a, "ray_1_worker": b, "ratio_b_over_a": b["steps_per_s"] / a["steps_per_s"]})
        print(f"{args.encoder}, {samples} puzzles/step, {args.threads} threads: "
              f"(a) plain {a['steps_per_s']:.3f} steps/s (data wait {a['data_wait_fraction']:.1%}), "
              f"(b) Ray 1 worker {b['steps_per_s']:.3f} steps/s (data wait {b['data_wait_fraction']:.1%}), "
              f"b/a = {out['ratio_b_over_a']:.3f}", flush=True)
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
