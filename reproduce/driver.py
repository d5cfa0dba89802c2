"""From a user's shards to the paper's Table 2 or Table 3: every run, every probe, one table.

    python -m reproduce table3 --data-root /shared/shards --out /shared/reproduce --dry-run
    python -m reproduce table3 --data-root /shared/shards --out /shared/reproduce [--address URL]
    python -m reproduce table2 --data-root data/miniature --miniature      # toy scale, offline

Reads top to bottom:

1. :func:`build_plan`: the table's pretraining runs (Table 3: jigsaw CE, DV-MINE and η-MINE on
   ImageNet-10%; Table 2: η-MINE and DV-MINE InfoMax and the supervised baseline on CIFAR-10 and
   STL-10) for ``--seeds`` pretraining seeds, and the probes of each (Table 2 also probes across:
   C10→S10, S10→C10), each with ``--probe-seeds`` probe seeds. Every run has a fixed name, so
   :func:`pretrain_state` can tell a finished run, a half-finished one and one not started.
2. :func:`add_costs`: each config's cost from :func:`pretrain.plan.plan` (FLOPs per step from
   ``torch.utils.flop_counter`` on one batch of the config's shape, the data rate it needs and gets),
   the probes' FLOPs, total PFLOPs and hours at a stated sustained TFLOP/s. ``--dry-run`` stops here
   and prints the plan; ``--plan-out`` writes it as JSON.
3. :func:`run_locally` (one run after another, in this process) or :func:`run_on_cluster` (Ray jobs,
   as many at once as the cluster's GPUs hold): finished runs and probes are skipped, a
   half-finished run continues from its last checkpoint (``python -m pretrain --resume``
   semantics, through :mod:`cluster.resume`).
4. :func:`aggregate` and :func:`make_table`: mean ± std over all models of a method (pretraining
   seeds × probe seeds; the paper's Table 3 is over 4 × 2 = 8), the paper's numbers beside ours.

``--miniature`` runs the same path at toy scale on data that ships with scikit-learn and
scikit-image (built under ``--data-root`` if missing): small encoders, tens of steps. Its numbers
only show that the path works; they say nothing about the paper's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval.paper_results import TABLE2_TOP1, TABLE3
from pretrain.plan import DEFAULT_TFLOPS

REPO_ROOT = Path(__file__).resolve().parent.parent
KS = ("top1", "top5", "top10")
DATA_SECONDS = 2.0  # how long pretrain.plan times each config's data side
METHOD_NAMES = {"dv-mine": "DV-MINE", "eta-mine": "η-MINE", "ce": "CE", "supervised": "Sup."}
DATASET_NAMES = {"cifar10": "C10", "stl10": "S10", "imagenet10": "ImageNet-10%"}


# ============================================================================ what the tables need


@dataclass(frozen=True)
class Dataset:
    """A dataset of the paper: its shard folder under ``--data-root`` and how to build it."""

    folder: str
    build: str  # the data_prep command (shown when the shards are missing)
    sizes: tuple[int, int]  # (probe train, probe test) images, for the plan when no manifest is there


@dataclass(frozen=True)
class Pretraining:
    """One method's pretraining on one dataset and the datasets its encoder is probed on."""

    method: str  # dv-mine | eta-mine | ce | supervised
    dataset: str
    config: str  # relative to the repository
    probes: tuple[str, ...]


DATASETS = {
    "cifar10": Dataset("cifar10", "python -m data_prep cifar10 --src cifar-10-python.tar.gz --out {dir}", (50_000, 10_000)),
    "stl10": Dataset("stl10", "python -m data_prep stl10 --src stl10_binary.tar.gz --out {dir}", (5_000, 8_000)),
    "imagenet10": Dataset("imagenet10", "python -m data_prep imagenet --train-dir ILSVRC2012/train --val-dir "
                          "ILSVRC2012/val --val-labels LOC_val_solution.csv --fraction 0.1 --resize 292 --out {dir}",
                          (128_116, 5_000)),
}

TABLES = {
    "table2": (
        Pretraining("dv-mine", "cifar10", "configs/infomax_dv_cifar10.yaml", ("cifar10", "stl10")),
        Pretraining("eta-mine", "cifar10", "configs/infomax_eta_cifar10.yaml", ("cifar10", "stl10")),
        Pretraining("supervised", "cifar10", "configs/supervised_cifar10.yaml", ("cifar10",)),
        Pretraining("dv-mine", "stl10", "configs/infomax_dv_stl10.yaml", ("stl10", "cifar10")),
        Pretraining("eta-mine", "stl10", "configs/infomax_eta_stl10.yaml", ("stl10", "cifar10")),
        Pretraining("supervised", "stl10", "configs/supervised_stl10.yaml", ("stl10",)),
    ),
    "table3": (
        Pretraining("ce", "imagenet10", "configs/jigsaw_ce_imagenet10.yaml", ("imagenet10",)),
        Pretraining("dv-mine", "imagenet10", "configs/jigsaw_dv_imagenet10.yaml", ("imagenet10",)),
        Pretraining("eta-mine", "imagenet10", "configs/jigsaw_eta_imagenet10.yaml", ("imagenet10",)),
    ),
}
PROBE_EPOCHS = 200  # paper, Appendix D

# The miniature: each dataset's stand-in (a data_prep command run under --data-root when missing)
# and the overrides that shrink each table's configs to a CPU.
MINIATURE_DATA = {
    "cifar10": ("digits", ["digits", "--size", "32"]),
    "stl10": ("skimage32", ["skimage-crops", "--images", "400", "--resize", "32"]),
    "imagenet10": ("skimage_crops", ["skimage-crops", "--images", "200", "--resize", "292"]),
}
MINIATURE_STEPS = {"table2": 40, "table3": 20}
MINIATURE_OVERRIDES = {
    "table2": ["data.batch_size=32", "data.loader_workers=0", "data.split=train", "optim.lr=1e-3"],
    "table3": ["model.encoder=dcgan", "model.depth=4", "model.kwargs.image_size=64", "data.images_per_batch=2",
               "data.perms_per_image=8", "data.loader_workers=0", "train.bf16=false", "train.channels_last=false"],
}
MINIATURE_PROBE_EPOCHS = 10
MINIATURE_SEEDS = 2


# ============================================================================ 1. the plan


@dataclass
class PretrainRun:
    method: str
    dataset: str
    seed: int
    config: str
    name: str  # run.name: <run root>/<name>-<time> is its run directory
    overrides: list[str]
    steps: int
    workers: int
    flops_per_step: float | None = None  # all ranks: pretrain.plan
    hours_at_data_rate: float | None = None  # with the config's loader cores, at the measured rate per core
    status: str = "to run"  # done | partial (step k) | to run

    @property
    def flops(self) -> float | None:
        return None if self.flops_per_step is None else self.flops_per_step * self.steps


@dataclass
class ProbeRun:
    method: str
    pretrained_on: str
    dataset: str
    seed: int  # the pretraining seed
    probe_seeds: int
    run_name: str
    data: str
    out: str
    epochs: int
    num_train: int
    num_test: int
    flops: float | None = None
    status: str = "to run"


@dataclass
class Plan:
    table: str
    miniature: bool
    out: str
    runs: list[PretrainRun] = field(default_factory=list)
    probes: list[ProbeRun] = field(default_factory=list)
    tflops: float = DEFAULT_TFLOPS

    @property
    def run_root(self) -> Path:
        return Path(self.out) / "runs"

    def run(self, name: str) -> PretrainRun:
        return next(r for r in self.runs if r.name == name)


class ReproduceError(RuntimeError):
    """A problem to report in one line (missing shards, a failed run)."""


def shard_dir(data_root: Path, dataset: str, miniature: bool) -> Path:
    return data_root / (MINIATURE_DATA[dataset][0] if miniature else DATASETS[dataset].folder)


def build_plan(table: str, data_root: str | os.PathLike, out: str | os.PathLike, *, seeds: int = 4,
               probe_seeds: int = 2, miniature: bool = False, methods: list[str] | None = None) -> Plan:
    """Every pretraining run and probe of ``table``; reads only configs and (if there) manifests."""
    from pretrain.config import load_config

    if table not in TABLES:
        raise ReproduceError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    if seeds < 1 or probe_seeds < 1:
        raise ReproduceError(f"--seeds and --probe-seeds must be >= 1, got {seeds} and {probe_seeds}")
    known = sorted({p.method for p in TABLES[table]})
    unknown = sorted(set(methods or []) - set(known))
    if unknown:
        raise ReproduceError(f"--methods {','.join(unknown)}: {table} has the methods {', '.join(known)}")
    data_root, out = Path(data_root).resolve(), Path(out).resolve()
    plan = Plan(table, miniature, str(out))
    for pre in TABLES[table]:
        if methods and pre.method not in methods:
            continue
        for seed in range(seeds):
            name = f"{table}{'-mini' if miniature else ''}-{pre.method}-{pre.dataset}-seed{seed}"
            overrides = [f"data.shards={shard_dir(data_root, pre.dataset, miniature)}", f"run.seed={seed}",
                         f"run.name={name}", f"run.root={plan.run_root}"]
            if miniature:
                steps = MINIATURE_STEPS[table]
                overrides += MINIATURE_OVERRIDES[table] + [f"train.steps={steps}", f"train.report_every={steps}",
                                                           f"train.checkpoint_every={steps}"]
                if pre.method == "supervised":
                    overrides.append(f"task.kwargs.num_classes={_class_count(shard_dir(data_root, pre.dataset, True))}")
            cfg = load_config(REPO_ROOT / pre.config, overrides)
            plan.runs.append(PretrainRun(pre.method, pre.dataset, seed, pre.config, name, overrides,
                                         int(cfg.train.steps), int(cfg.train.num_workers)))
            for probe_on in pre.probes:
                data = shard_dir(data_root, probe_on, miniature)
                num_train, num_test = _probe_sizes(data, probe_on)
                plan.probes.append(ProbeRun(
                    pre.method, pre.dataset, probe_on, seed, probe_seeds, name, str(data),
                    str(out / "probes" / f"{name}-on-{probe_on}"),
                    MINIATURE_PROBE_EPOCHS if miniature else PROBE_EPOCHS, num_train, num_test))
    return plan


def _class_count(shards: Path) -> int:
    from data_prep.manifest import ManifestError, read_manifest

    try:
        return len(read_manifest(shards)["class_names"])
    except ManifestError:
        return 10  # a dry run before the miniature's data exist: the plan only needs a number


def _probe_sizes(data: Path, dataset: str) -> tuple[int, int]:
    """(train, test) images of a probe dataset: from its manifest, else the dataset's usual sizes."""
    from data_prep.manifest import ManifestError, read_manifest

    try:
        splits = read_manifest(data)["splits"]
    except ManifestError:
        return DATASETS[dataset].sizes
    test = "test" if "test" in splits else "val"
    return splits["train"]["num_samples"], splits.get(test, {}).get("num_samples", 0)


def check_data(table: str, data_root: Path, miniature: bool, methods: list[str] | None = None) -> None:
    """Every shard folder the table reads exists (the miniature builds its own); else one line naming
    the command that builds it."""
    if not miniature:
        missing = missing_shards(table, data_root, methods)
        if missing:
            raise ReproduceError(next(iter(missing.values())))
        return
    used = [p for p in TABLES[table] if not methods or p.method in methods]
    for dataset in sorted({p.dataset for p in used} | {d for p in used for d in p.probes}):
        folder = shard_dir(data_root, dataset, miniature)
        if not (folder / "manifest.json").is_file():
            from data_prep.__main__ import main as data_prep_main

            print(f"building the miniature's {dataset} stand-in in {folder}", flush=True)
            args = MINIATURE_DATA[dataset][1] + ["--out", str(folder), "--workers", "1", "--no-progress"]
            if data_prep_main(args) != 0:
                raise ReproduceError(f"could not build {folder} (python -m data_prep {' '.join(args)})")


def missing_shards(table: str, data_root: Path, methods: list[str] | None = None) -> dict[str, str]:
    """``{dataset: "no <dataset> shards in <folder>: build them with <command>"}`` for each dataset the
    table reads (full scale) whose shards are not under ``data_root``."""
    from data_prep.manifest import ManifestError, read_manifest

    used = [p for p in TABLES[table] if not methods or p.method in methods]
    missing = {}
    for dataset in sorted({p.dataset for p in used} | {d for p in used for d in p.probes}):
        folder = shard_dir(data_root, dataset, False)
        try:
            read_manifest(folder)
        except ManifestError:
            missing[dataset] = f"no {dataset} shards in {folder}: build them with {DATASETS[dataset].build.format(dir=folder)}"
    return missing


# ============================================================================ 2. the cost


def probe_flops(config: str, overrides: list[str], probe: ProbeRun) -> float:
    """Feature extraction (one forward pass per train and test image, cached) plus the linear probe."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from eval.features import kind_of
    from pretrain.checkpoint import build_encoder_from_config
    from pretrain.config import load_config, to_plain

    cfg = to_plain(load_config(REPO_ROOT / config, overrides))
    encoder = build_encoder_from_config(cfg["model"]).eval()
    x = torch.randn(9, 3, 64, 64) if kind_of(cfg) == "jigsaw" else torch.randn(1, 3, cfg["data"]["size"], cfg["data"]["size"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(x)
    per_image = counter.get_total_flops()
    classes = 1000 if probe.dataset == "imagenet10" else 10
    linear = 3 * 2 * encoder.feature_dim * classes  # forward + backward of one row
    return float(per_image * (probe.num_train + probe.num_test)
                 + linear * probe.num_train * probe.epochs * probe.probe_seeds)


def add_costs(plan: Plan) -> None:
    """Fill in every run's cost (:func:`pretrain.plan.plan` of its config, each config once) and
    every probe's FLOPs."""
    from pretrain.config import load_config
    from pretrain.plan import plan as config_plan

    per_config: dict[tuple, object] = {}
    for run in plan.runs:
        key = (run.config, *[o for o in run.overrides if not o.startswith(("run.", "data.shards="))])
        if key not in per_config:
            cfg = load_config(REPO_ROOT / run.config, run.overrides)
            per_config[key] = config_plan(cfg, tflops=plan.tflops, name=run.config, data_seconds=DATA_SECONDS)
        cost = per_config[key]
        run.flops_per_step = cost.flops_per_step
        run.hours_at_data_rate = cost.hours_at_data_rate
    per_probe: dict[tuple, float] = {}
    for probe in plan.probes:
        run = plan.run(probe.run_name)
        key = (run.config, probe.dataset)
        if key not in per_probe:
            per_probe[key] = probe_flops(run.config, run.overrides, probe)
        probe.flops = per_probe[key]


# ============================================================================ 3. running it


def pretrain_state(plan: Plan, run: PretrainRun) -> tuple[str, Path | None]:
    """("done" | "partial" | "new", run directory or None) of a run, from its checkpoints on disk."""
    from cluster.resume import latest_run_dir

    run_dir = latest_run_dir(plan.run_root, run.name)
    if run_dir is None:
        return "new", None
    return ("done" if last_step(run_dir) >= run.steps else "partial"), run_dir


def last_step(run_dir) -> int:
    """The step of a run directory's newest checkpoint (0 without one)."""
    from pretrain.checkpoint import checkpoint_dirs, experiment_dir, step_of

    dirs = checkpoint_dirs(experiment_dir(run_dir))
    return step_of(dirs[-1]) if dirs else 0


def probe_state(plan: Plan, probe: ProbeRun) -> str:
    """"done" when the probe's results.json is for the run's final checkpoint and these settings."""
    results = Path(probe.out) / "results.json"
    state, run_dir = pretrain_state(plan, plan.run(probe.run_name))
    if state != "done" or not results.is_file():
        return "to run"
    from pretrain.checkpoint import resolve_checkpoint_file

    res = json.loads(results.read_text())
    same = (res.get("checkpoint") == str(resolve_checkpoint_file(run_dir).resolve())
            and res.get("seeds") == list(range(probe.probe_seeds)) and res.get("epochs") == probe.epochs)
    return "done" if same else "to run"


def refresh_status(plan: Plan) -> None:
    for run in plan.runs:
        state, run_dir = pretrain_state(plan, run)
        if state == "partial":
            run.status = f"partial (step {last_step(run_dir)} of {run.steps})"
        else:
            run.status = {"done": "done", "new": "to run"}[state]
    for probe in plan.probes:
        probe.status = probe_state(plan, probe)


def pretrain_args(plan: Plan, run: PretrainRun) -> list[str]:
    """``python -m pretrain`` arguments: resume the run's directory if it exists, else start it."""
    from cluster.resume import pretrain_command

    return pretrain_command(REPO_ROOT / run.config, run.overrides)[3:]  # after [python, -m, pretrain]


def run_locally(plan: Plan) -> None:
    """Every pretraining run, then every probe, one after another in this process."""
    from eval.linear import run_linear_eval
    from pretrain.__main__ import main as pretrain_main

    for run in plan.runs:
        state, _ = pretrain_state(plan, run)
        if state == "done":
            print(f"[skip] {run.name}: finished", flush=True)
            continue
        print(f"[pretrain] {run.name} ({run.steps} steps)", flush=True)
        code = pretrain_main(pretrain_args(plan, run))
        if code != 0:
            raise ReproduceError(f"pretraining {run.name} failed (exit {code}); fix it and re-run the same "
                                 f"command: finished runs are skipped, this one continues from its checkpoint")
    for probe in plan.probes:
        if probe_state(plan, probe) == "done":
            print(f"[skip] probe of {probe.run_name} on {probe.dataset}: finished", flush=True)
            continue
        _, run_dir = pretrain_state(plan, plan.run(probe.run_name))
        print(f"[probe] {probe.run_name} on {probe.dataset} ({probe.probe_seeds} seeds)", flush=True)
        run_linear_eval(str(run_dir), probe.data, epochs=probe.epochs, seeds=probe.probe_seeds, out=probe.out,
                        cache_dir=str(Path(plan.out) / "feature_cache"), use_ray=False)


def cluster_gpus(address: str) -> int:
    """GPUs of the Ray cluster behind the job API ``address`` (its state API)."""
    from ray.util.state import list_nodes

    from cluster.submit import normalise_address

    nodes = list_nodes(address=normalise_address(address), filters=[("state", "=", "ALIVE")])
    return int(sum(n.resources_total.get("GPU", 0) for n in nodes))


def probe_entrypoint(plan: Plan, probe: ProbeRun, run_dir: Path) -> str:
    """The ``python -m eval.linear`` job command of a probe (through ``cluster.submit.eval_job``)."""
    from cluster.submit import eval_job

    return eval_job([f"checkpoint={run_dir}", f"data={probe.data}", f"epochs={probe.epochs}",
                     f"seeds={probe.probe_seeds}", f"out={probe.out}", f"cache_dir={Path(plan.out) / 'feature_cache'}"])


def run_on_cluster(plan: Plan, address: str, gpus: int | None = None, poll_s: float = 10.0) -> None:
    """Submit the runs as Ray jobs, as many at once as the cluster's GPUs hold; each probe once its
    run has finished. ``--out`` and ``--data-root`` must be on storage every node and this machine mount."""
    from cluster import submit as cs

    client = cs.connect(address)
    env = cs.runtime_env(REPO_ROOT)
    try:
        reported = cluster_gpus(address)
    except Exception as exc:  # the state API is unreachable or refuses: say so in one line
        raise ReproduceError(f"cannot read the GPUs of {address} ({' '.join(str(exc).split())[:200]})") from None
    gpus = gpus or reported
    if gpus < 1:
        raise ReproduceError(f"the cluster at {address} reports no GPU; pass --gpus N to run N jobs at once on its CPUs")
    probe_gpus = 1 if reported else 0  # a probe job asks for a GPU only where there are GPUs
    queue: list[tuple[str, object]] = [("pretrain", r) for r in plan.runs if pretrain_state(plan, r)[0] != "done"]
    queue += [("probe", p) for p in plan.probes if probe_state(plan, p) != "done"]
    running: dict[str, tuple[str, object, int]] = {}  # job id -> (kind, item, GPUs)
    finished: set[str] = {r.name for r in plan.runs if pretrain_state(plan, r)[0] == "done"}
    failed: list[str] = []
    while queue or running:
        free = gpus - sum(g for _, _, g in running.values())
        for kind, item in list(queue):
            if kind == "probe" and item.run_name not in finished:
                if item.run_name in failed:
                    queue.remove((kind, item))
                continue
            need = item.workers if kind == "pretrain" else 1  # a CPU-only cluster: --gpus counts job slots
            if need > free:
                continue
            if kind == "pretrain":
                entrypoint, run_name, _ = cs.pretrain_job(REPO_ROOT / item.config, item.overrides, REPO_ROOT)
                job = cs.submit(client, entrypoint, env, kind="pretrain", run_name=run_name)
            else:
                _, run_dir = pretrain_state(plan, plan.run(item.run_name))
                job = cs.submit(client, probe_entrypoint(plan, item, run_dir), env, kind="eval",
                                entrypoint_gpus=probe_gpus)
            print(f"[job {job}] {kind} {getattr(item, 'name', None) or f'{item.run_name} on {item.dataset}'}", flush=True)
            running[job] = (kind, item, need)
            queue.remove((kind, item))
            free -= need
        time.sleep(poll_s)
        for job, (kind, item, _) in list(running.items()):
            status = str(client.get_job_status(job))
            if status not in cs.TERMINAL:
                continue
            del running[job]
            name = item.name if kind == "pretrain" else f"{item.run_name} on {item.dataset}"
            if status == "SUCCEEDED":
                if kind == "pretrain":
                    finished.add(item.name)
            else:
                failed.append(item.name if kind == "pretrain" else name)
                print(f"[job {job}] {kind} {name}: {status} (python -m cluster.submit logs {job})", flush=True)
    if failed:
        raise ReproduceError(f"{len(failed)} job(s) failed: {', '.join(failed)}; re-run the same command to "
                             f"retry them (finished runs are skipped, started ones continue)")


# ============================================================================ 4. the table


def collect(plan: Plan) -> list[dict]:
    """One record per (probe, probe seed) found on disk: method, datasets, pretraining and probe seed, top-k."""
    records = []
    for probe in plan.probes:
        results = Path(probe.out) / "results.json"
        if not results.is_file():
            continue
        for r in json.loads(results.read_text())["per_seed"]:
            records.append({"method": probe.method, "pretrained_on": probe.pretrained_on, "dataset": probe.dataset,
                            "seed": probe.seed, "probe_seed": r["seed"], **{k: float(r[k]) for k in KS}})
    return records


def aggregate(records: list[dict]) -> dict[tuple, dict]:
    """(method, pretrained on, probed on) -> {"models": n, top-k: {"mean", "std"}}: over every model.

    A model is one (pretraining seed, probe seed); std is the sample std (ddof 1), 0 for one model.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["pretrained_on"], r["dataset"]), []).append(r)
    out = {}
    for key, rows in groups.items():
        out[key] = {"models": len(rows)}
        for k in KS:
            a = np.array([r[k] for r in rows], dtype=np.float64)
            out[key][k] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}
    return out


def _pm(stat: dict | None, models: int | None = None, expected: int | None = None) -> str:
    if stat is None:
        return "–"
    text = f"{stat['mean']:.1f} ± {stat['std']:.1f}"
    return text if models is None or models == expected else f"{text} ({models} of {expected})"


def make_table(plan: Plan, agg: dict[tuple, dict], seeds: int, probe_seeds: int) -> str:
    """The Markdown table: ours (mean ± std over all models) beside the paper's numbers."""
    expected = seeds * probe_seeds
    lines = []
    if plan.miniature:
        lines += ["**Miniature**: a toy-scale stand-in (scikit-learn digits for CIFAR-10, scikit-image crops at "
                  "32×32 for STL-10 and at 292×292 for ImageNet-10%; small encoders, tens of steps). It shows that "
                  "the path runs end to end; its numbers are not comparable with the paper's, which are shown for "
                  "the layout only.", ""]
    if plan.table == "table3":
        lines += ["Table 3: jigsaw pretraining on ImageNet-10%, linear probe on ImageNet-10% (top-k %).", "",
                  "| method | models | top-1 | top-5 | top-10 | paper top-1 | paper top-5 | paper top-10 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for method in ("dv-mine", "eta-mine", "ce"):
            a = agg.get((method, "imagenet10", "imagenet10"))
            paper = TABLE3[method]
            ours = [_pm(a[k] if a else None) for k in KS]
            theirs = [f"{paper[k][0]:.1f} ± {paper[k][1]:.1f}" for k in KS]
            lines.append(f"| {METHOD_NAMES[method]} | {a['models'] if a else 0} of {expected} | "
                         + " | ".join(ours + theirs) + " |")
    else:
        methods = ("dv-mine", "eta-mine", "supervised")
        lines += ["Table 2: Deep InfoMax (DCGAN encoder, 32×32), linear probe top-1 %, pretrain → probe dataset.", "",
                  "| pretrain → probe | " + " | ".join(METHOD_NAMES[m] for m in methods) + " | "
                  + " | ".join(f"paper {METHOD_NAMES[m]}" for m in methods) + " |",
                  "|" + " --- |" * (1 + 2 * len(methods))]
        for pre, probe in (("cifar10", "cifar10"), ("cifar10", "stl10"), ("stl10", "cifar10"), ("stl10", "stl10")):
            paper = TABLE2_TOP1[(pre, probe)]
            ours = []
            for m in methods:
                a = agg.get((m, pre, probe))
                ours.append(_pm(a["top1"], a["models"], expected) if a else ("–" if m not in paper else "not run"))
            theirs = [f"{paper[m]:.1f}" if m in paper else "–" for m in methods]
            lines.append(f"| {DATASET_NAMES[pre]} → {DATASET_NAMES[probe]} | " + " | ".join(ours + theirs) + " |")
    lines += ["", f"Ours: mean ± std (sample std) over all models of a method, a model being one of {seeds} "
              f"pretraining seeds × {probe_seeds} probe seeds; a cell with fewer models says how many it has."]
    return "\n".join(lines) + "\n"


# ============================================================================ command line


def plan_json(plan: Plan) -> dict:
    """The plan as JSON: ``{"table", "runs": [{"kind", "method", "seed", "config", "steps", "flops", ...}], "total_flops"}``."""
    runs = [{"kind": "pretrain", "method": r.method, "seed": r.seed, "config": r.config, "dataset": r.dataset,
             "steps": r.steps, "flops_per_step": r.flops_per_step, "flops": r.flops,
             "hours_at_data_rate": r.hours_at_data_rate, "name": r.name,
             "out": str(plan.run_root / f"{r.name}-<time>"), "overrides": r.overrides, "status": r.status}
            for r in plan.runs]
    runs += [{"kind": "probe", "method": p.method, "seed": p.seed, "config": plan.run(p.run_name).config,
              "pretrained_on": p.pretrained_on, "dataset": p.dataset, "probe_seeds": p.probe_seeds,
              "steps": p.epochs * math.ceil(p.num_train / 256) * p.probe_seeds, "epochs": p.epochs,
              "flops": p.flops, "out": p.out, "status": p.status} for p in plan.probes]
    total = sum(r["flops"] or 0.0 for r in runs)
    data_hours = sum(r.get("hours_at_data_rate") or 0.0 for r in runs)
    return {"table": plan.table, "miniature": plan.miniature, "runs": runs, "total_flops": total,
            "tflops": plan.tflops, "hours": total / (plan.tflops * 1e12) / 3600, "pretrain_hours_at_data_rate": data_hours}


def _flop_text(flops: float | None) -> str:
    if flops is None:
        return "?"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:,.1f} {unit}"
    return f"{flops:,.0f} FLOP"


def describe(plan_dict: dict) -> str:
    """The plan as text: one line a run, then the totals."""
    lines = [f"{plan_dict['table']}{' (miniature)' if plan_dict['miniature'] else ''}: "
             f"{sum(r['kind'] == 'pretrain' for r in plan_dict['runs'])} pretraining runs, "
             f"{sum(r['kind'] == 'probe' for r in plan_dict['runs'])} probes"]
    for r in plan_dict["runs"]:
        if r["kind"] == "pretrain":
            per_step = "?" if r["flops_per_step"] is None else f"{r['flops_per_step'] / 1e9:,.1f} GFLOP/step"
            data = "?" if r["hours_at_data_rate"] is None else f"{r['hours_at_data_rate']:,.1f} h"
            lines.append(f"  pretrain {r['method']:<10} {r['dataset']:<10} seed {r['seed']}  {r['config']}  "
                         f"{r['steps']:,} steps × {per_step} = {_flop_text(r['flops'])}, data side {data}  [{r['status']}]  {r['out']}")
        else:
            lines.append(f"  probe    {r['method']:<10} {r['pretrained_on']}→{r['dataset']:<10} seed {r['seed']}  "
                         f"{r['probe_seeds']} probe seeds × {r['epochs']} epochs = {_flop_text(r['flops'])}  [{r['status']}]  {r['out']}")
    hours = plan_dict["hours"]
    gpu_time = f"{hours:,.1f} GPU-hours" if hours >= 1 else f"{hours * 60:,.1f} GPU-minutes"
    lines.append(f"total {_flop_text(plan_dict['total_flops'])} = {gpu_time} at a "
                 f"sustained {plan_dict['tflops']:g} TFLOP/s (--tflops; default 40% of an H200's dense bf16 peak); "
                 f"the pretraining's data side at its measured rate per core, with each config's loader cores: "
                 f"{plan_dict['pretrain_hours_at_data_rate']:,.1f} hours")
    return "\n".join(lines)


def reproduce(table: str, data_root: str | os.PathLike, out: str | os.PathLike, *, seeds: int = 4,
              probe_seeds: int = 2, miniature: bool = False, methods: list[str] | None = None,
              address: str | None = None, gpus: int | None = None, dry_run: bool = False,
              plan_out: str | os.PathLike | None = None, tflops: float = DEFAULT_TFLOPS) -> str | None:
    """Plan, run what is not finished, and write ``<out>/table.md``; returns the table (None for a dry run)."""
    if table not in TABLES:
        raise ReproduceError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    if not dry_run:  # before the plan: the miniature's supervised runs read the class count of its data
        check_data(table, Path(data_root).resolve(), miniature, methods)
    plan = build_plan(table, data_root, out, seeds=seeds, probe_seeds=probe_seeds, miniature=miniature,
                      methods=methods)
    plan.tflops = tflops
    add_costs(plan)
    refresh_status(plan)
    missing = {} if miniature else missing_shards(table, Path(data_root).resolve(), methods)  # a dry run's check
    for run in plan.runs:
        run.status = "no shards" if run.dataset in missing else run.status
    for probe in plan.probes:
        probe.status = "no shards" if {probe.dataset, probe.pretrained_on} & set(missing) else probe.status
    summary = plan_json(plan)
    print(describe(summary), flush=True)
    for line in missing.values():
        print(line, flush=True)
    if plan_out is not None:
        Path(plan_out).write_text(json.dumps(summary, indent=1) + "\n")
    if dry_run:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "plan.json").write_text(json.dumps(summary, indent=1) + "\n")
    if address is None:
        run_locally(plan)
    else:
        run_on_cluster(plan, address, gpus)
    agg = aggregate(collect(plan))
    text = make_table(plan, agg, seeds, probe_seeds)
    (Path(out) / "table.md").write_text(text)
    (Path(out) / "table.json").write_text(json.dumps(
        [{"method": k[0], "pretrained_on": k[1], "dataset": k[2], **v} for k, v in sorted(agg.items())], indent=1) + "\n")
    return text


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__.splitlines()[0])
    ap.add_argument("table", choices=sorted(TABLES), help="table2: Deep InfoMax on CIFAR-10/STL-10; table3: jigsaw on ImageNet-10%%")
    ap.add_argument("--data-root", required=True,
                    help="folder holding the shards: cifar10/ and stl10/ (table2) or imagenet10/ (table3); "
                         "with --miniature, where the offline stand-ins are built")
    ap.add_argument("--out", help="runs, probes and the table (default runs/reproduce/<table>[-miniature]); "
                                  "with --address, on storage every node and this machine mount")
    ap.add_argument("--seeds", type=int, help="pretraining seeds per method (default 4 as the paper; 2 with --miniature)")
    ap.add_argument("--probe-seeds", type=int, default=2, help="probe seeds per encoder (paper: 2; 8 models = 4 × 2)")
    ap.add_argument("--methods", help="comma-separated subset of the table's methods (dv-mine, eta-mine, ce, supervised)")
    ap.add_argument("--address", help="Ray job API (dashboard) URL: runs go out as jobs; default: here, one after another")
    ap.add_argument("--gpus", type=int, help="GPUs the jobs may fill at once (default: what the cluster reports)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (runs, FLOPs, hours) and stop")
    ap.add_argument("--plan-out", help="write the plan as JSON to this file")
    ap.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS, help="sustained TFLOP/s for the hours in the plan")
    ap.add_argument("--miniature", action="store_true",
                    help="the same path at toy scale on offline data (digits, scikit-image crops), minutes on a CPU")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = args.out or f"runs/reproduce/{args.table}{'-miniature' if args.miniature else ''}"
    try:
        seeds = args.seeds if args.seeds is not None else (MINIATURE_SEEDS if args.miniature else 4)
        text = reproduce(args.table, args.data_root, out, seeds=seeds, probe_seeds=args.probe_seeds,
                         miniature=args.miniature, methods=args.methods.split(",") if args.methods else None,
                         address=args.address, gpus=args.gpus, dry_run=args.dry_run, plan_out=args.plan_out,
                         tflops=args.tflops)
    except (ReproduceError, FileNotFoundError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if text is not None:
        print(text, end="")
        print(f"table: {Path(out) / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
