"""What a report costs: the whole run with one report against the same run with a report every step.

The case that showed the cost: ``configs/demo_infomax_eta.yaml`` (InfoMax, η-MINE, DCGAN depth 2,
batch 32) on scikit-learn's digits (1,797 real 8×8 scans at 32×32, data_prep's ``digits`` source),
one Ray worker, ``--steps`` steps, one checkpoint at the end. (a) ``train.report_every=<steps>``:
one report; (b) ``train.report_every=1``: a report after every step (metrics all-reduced, TensorBoard
and ``metrics.jsonl`` written, ``ray.train.report`` called). Each run is ``pretrain.train.launch``
from the call to its result, as ``python -m pretrain`` runs it: the benchmark sets no Ray
environment variable and no setting the shipped config does not have. Ray is started once before the
runs, as ``python -m pretrain`` starts it (Ray's defaults; its start is the same for both and is
printed apart). The runs alternate (a, b, a, b, ...);
medians. Printed: both whole-run times, their ratio a/b (1: reports cost nothing) and the cost of
one report, (b - a) / (steps - 1).

Before the launcher shortened Ray Train's controller poll, each report waited for it: 34 s against
144 s at 60 steps, about 1.8 s a report (the measurement of the issue that asked for this).

    nice -n 10 python benchmarks/report_cost.py                      # 60 steps, 3 pairs
    python benchmarks/report_cost.py --quick                         # seconds; the figures mean nothing (tests)
"""
from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_infomax_eta.yaml"


def digits_shards(work: Path) -> Path:
    """scikit-learn's digits as shards (``python -m data_prep digits``)."""
    from data_prep.__main__ import main as data_prep_main
    from data_prep.manifest import MANIFEST_NAME

    out = work / "digits"
    if not (out / MANIFEST_NAME).is_file():
        assert data_prep_main(["digits", "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    return out


def run_config(shards: Path, root: Path, steps: int, report_every: int, threads: int):
    from pretrain.config import load_config

    return load_config(CONFIG, [
        f"data.shards={shards}", f"run.root={root}", f"run.name=report{report_every}", "train.num_workers=1",
        f"train.threads_per_worker={threads}", f"train.steps={steps}", f"train.report_every={report_every}",
        f"train.checkpoint_every={steps}"])


def whole_run_s(cfg) -> float:
    """Seconds from ``launch`` to its result."""
    from pretrain.train import launch

    t0 = time.perf_counter()
    launch(cfg)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each setting (medians are reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the worker (the config's default)")
    p.add_argument("--work", default=None, help="folder for shards and runs (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--quick", action="store_true", help="3 steps, one pair")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 3, 1
    from pretrain import preflight

    preflight.local_ray_on_loopback()  # before Ray is imported, as `python -m pretrain` does
    import ray

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-report-"))
    if not args.work:  # runs and shards: gone when the benchmark exits
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    shards = digits_shards(work)
    one = run_config(shards, work / "runs", args.steps, args.steps, args.threads)
    every = run_config(shards, work / "runs", args.steps, 1, args.threads)
    own = not ray.is_initialized()  # a caller's Ray (the tests') is used as it is
    t0 = time.perf_counter()
    preflight.init_ray()  # the local Ray `python -m pretrain` starts, with Ray's defaults
    ray_init_s = time.perf_counter() - t0
    try:
        a, b = [], []
        for _ in range(args.repeats):
            a.append(whole_run_s(one))
            b.append(whole_run_s(every))
    finally:
        if own:
            ray.shutdown()
    ma, mb = float(np.median(a)), float(np.median(b))
    per_report = (mb - ma) / max(args.steps - 1, 1)
    out = {"steps": args.steps, "threads": args.threads, "repeats": args.repeats, "ray_init_s": ray_init_s,
           "one_report_s": a, "report_every_step_s": b, "median_one_report_s": ma, "median_report_every_step_s": mb,
           "ratio_a_over_b": ma / mb, "seconds_per_report": per_report}
    print(f"InfoMax η-MINE, DCGAN, digits, 1 worker, {args.threads} thread(s), {args.steps} steps, "
          f"median of {args.repeats} alternating runs (ray.init {ray_init_s:.1f} s before them):\n"
          f"  (a) one report:           {ma:.2f} s  ({', '.join(f'{x:.2f}' for x in a)})\n"
          f"  (b) a report every step:  {mb:.2f} s  ({', '.join(f'{x:.2f}' for x in b)})\n"
          f"  whole run a/b = {ma / mb:.3f}; one report costs {per_report * 1e3:+.1f} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
