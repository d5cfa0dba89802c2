"""``make demo``: the main job end to end on this machine, on real offline images.

1. Shards: scikit-learn's digits (1,797 real 8×8 scans scaled to 32×32, named ``sklearn-digits``) and
   random crops of scikit-image's sample photographs (``skimage-crops``), via ``python -m data_prep``.
2. Pretraining on a local Ray with 2 workers (``python -m pretrain``): Deep InfoMax with the
   DCGAN-style encoder under η-MINE and under DV-MINE, and a short jigsaw run (MI witness, η-MINE).
3. Evaluation (``python -m eval.linear``): linear probe (top-1/5/10, mean ± std over seeds) and kNN on
   the frozen encoders, and on a randomly initialised encoder of the same architecture.
4. One table (``python -m eval.table``) printed and written to ``<out>/table.md``.

Each stage is the project's own command line, run as a subprocess, exactly as a user would run it;
its progress shows as it runs (pretraining: a line per report; probes: a line every 30 s).
Re-running reuses the shards; ``--quick`` cuts steps and epochs (what the tests run).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import storage


# Lines Ray forwards from its actors and workers, "(TrainController pid=123) ...": in the log only.
RAY_PROCESS_LINE = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")


def run(cmd: list[str], log: Path, stage: str = "", echo: bool = True) -> str:
    """Run one stage: its output goes to ``log`` and, as it comes (``echo``), to the console (progress
    lines, results; Ray's per-process lines only to the log). ``stage``: its header, e.g.
    ``stage 3/11: pretraining infomax η-MINE``. Exit with the stage's status on failure."""
    if stage:
        print(f"\n{stage}", flush=True)
    print(f"$ {' '.join(cmd)}", flush=True)
    start = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    lines = []
    with open(log, "w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                               env=env) as proc:
        for line in proc.stdout:
            f.write(line)
            lines.append(line)
            if echo and not RAY_PROCESS_LINE.match(line):
                print(f"    {line.rstrip()}", flush=True)
    output = "".join(lines)
    if proc.returncode != 0:
        hidden = [line for line in lines if RAY_PROCESS_LINE.match(line)]  # a worker's traceback is here
        print("".join(hidden[-40:]), file=sys.stderr)
        raise SystemExit(f"demo: stage failed (exit {proc.returncode}); full log in {log}")
    print(f"  done in {time.time() - start:.0f} s (log: {log})", flush=True)
    return output


def run_dir_of(output: str) -> str:
    match = re.search(r"^run directory: (.+)$", output, re.MULTILINE)
    if not match:
        raise SystemExit("demo: the pretraining command did not print its run directory")
    return match.group(1).strip()


# (name, config, which shards): the three pretraining runs of the demo
RUNS = (
    ("infomax η-MINE", "configs/demo_infomax_eta.yaml", "digits"),
    ("infomax DV-MINE", "configs/demo_infomax_dv.yaml", "digits"),
    ("jigsaw η-MINE", "configs/demo_jigsaw_eta.yaml", "photos"),
)


def tag_of(name: str) -> str:
    """A file-name form of a stage name: ``infomax η-MINE`` -> ``infomax_eta_mine``."""
    return re.sub(r"\W+", "_", name.lower().replace("η", "eta"))


def shard_dirs(out: Path) -> dict[str, Path]:
    return {"digits": out / "shards" / "digits", "photos": out / "shards" / "skimage_crops"}


def shard_commands(out: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """(log name, command) of the two shard builds."""
    py, dirs = sys.executable, shard_dirs(out)
    return [
        ("shards_digits", [py, "-m", "data_prep", "digits", "--out", str(dirs["digits"]), "--no-progress"]),
        ("shards_skimage", [py, "-m", "data_prep", "skimage-crops", "--images", "60" if quick else "400",
                            "--resize", "292", "--out", str(dirs["photos"]), "--no-progress"]),
    ]


def pretrain_commands(out: Path, quick: bool, workers: int) -> list[tuple[str, list[str]]]:
    """(run name, command) of the three pretraining runs, in ``RUNS`` order."""
    infomax_steps, jigsaw_steps = (20, 6) if quick else (300, 60)
    dirs = shard_dirs(out)
    common = [f"run.root={out / 'runs'}", f"train.num_workers={workers}"]
    return [(name, [sys.executable, "-m", "pretrain", "--config", config, f"data.shards={dirs[data]}",
                    f"train.steps={jigsaw_steps if data == 'photos' else infomax_steps}", *common])
            for name, config, data in RUNS]


def eval_commands(out: Path, quick: bool, run_dirs: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(log name, command) of the probes: each run's encoder, then random-init baselines of both architectures."""
    # The paper probes for 200 epochs; 100 keep the demo near 10 minutes on 2 cores (`eval.linear` defaults to 200).
    epochs, seeds = (5, 2) if quick else (100, 2)
    dirs, results = shard_dirs(out), out / "results"
    probe = [f"epochs={epochs}", f"seeds={seeds}", f"cache_dir={out / 'feature_cache'}"]
    evals = [(name, run_dirs[name], dirs[data], []) for name, _, data in RUNS]
    evals += [("infomax random init", run_dirs["infomax η-MINE"], dirs["digits"], ["random_init=true"]),
              ("jigsaw random init", run_dirs["jigsaw η-MINE"], dirs["photos"], ["random_init=true"])]
    return [(f"eval_{tag_of(name)}", [sys.executable, "-m", "eval.linear", f"checkpoint={run_dir}", f"data={shards}",
                                      f"out={results / tag_of(name)}", *probe, *extra])
            for name, run_dir, shards, extra in evals]


def reading(results: Path) -> str:
    """Two sentences on the table: each pretrained encoder's probe top-1 against the random-init
    baseline of its architecture on the same images (from the stages' ``results.json``)."""
    import json

    def top1(name: str) -> float:
        return json.loads((results / tag_of(name) / "results.json").read_text())["top1"]["mean"]

    infomax_base, jigsaw_base = top1("infomax random init"), top1("jigsaw random init")
    gains = ", ".join(f"{name} {top1(name):.1f}" for name, _, data in RUNS if data == "digits")
    jigsaw = top1("jigsaw η-MINE")
    return (f"Reading: on the digits the InfoMax encoders reach probe top-1 {gains} against {infomax_base:.1f} "
            f"for the same DCGAN encoder with random weights; on the photo crops the jigsaw encoder reaches "
            f"{jigsaw:.1f} against {jigsaw_base:.1f}. The gap to the random-init rows is what pretraining bought; "
            f"a difference between the bounds smaller than the ± spread over probe seeds is not one.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo", help="where shards, runs, results and logs go")
    ap.add_argument("--quick", action="store_true", help="a few steps and epochs only (smoke test)")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers per pretraining run")
    args = ap.parse_args(argv)
    try:
        out = storage.local_only(args.out, "--out")
    except storage.StorageError as exc:
        ap.error(str(exc))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    shards = shard_commands(out, args.quick)
    pretrain = pretrain_commands(out, args.quick, args.workers)
    probes = len(eval_commands(out, args.quick, {name: "" for name, _, _ in RUNS}))  # each run and the baselines
    total = len(shards) + len(pretrain) + probes + 1  # + the table
    count = iter(range(1, total + 1))

    def stage(what: str) -> str:
        return f"stage {next(count)}/{total}: {what}"

    for log, command in shards:
        run(command, logs / f"{log}.log", stage(f"shards ({log.removeprefix('shards_')})"))
    run_dirs = {name: run_dir_of(run(command, logs / f"pretrain_{tag_of(name)}.log", stage(f"pretraining {name}")))
                for name, command in pretrain}
    for log, command in eval_commands(out, args.quick, run_dirs):
        run(command, logs / f"{log}.log", stage(f"linear probe and kNN: {log.removeprefix('eval_').replace('_', ' ')}"))
    results = out / "results"
    table = run([sys.executable, "-m", "eval.table", str(results), "--out", str(out / "table.md")], logs / "table.log",
                stage("the table"), echo=False)
    print()
    print(f"Demo results ({'quick' if args.quick else 'full'}; sklearn-digits for InfoMax, skimage-crops for jigsaw):")
    print(table)
    print(reading(results))
    print(f"total {time.time() - t0:.0f} s. TensorBoard (each run with its config, hparams and probe curves): "
          f"tensorboard --logdir {out / 'runs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
