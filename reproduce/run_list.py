"""The run list of a table: its pretraining runs and probes, what each costs, and the data they need.

:func:`build_run_list` names every run of a table (its config, seed and overrides), so that
:mod:`reproduce.run` can tell a finished run, a half-finished one and one not started;
:func:`add_costs` fills in each one's FLOPs and hours from :func:`pretrain.plan.plan`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from data_prep.builders import build as build_shards
from data_prep.manifest import MANIFEST_NAME, ManifestError, read_manifest
from data_prep.shard_writer import EncodeOptions
from eval.features import kind_of
from pretrain.config import load_config, to_plain
from pretrain.models import build_encoder_from_config
from pretrain.plan import DEFAULT_TFLOPS
from pretrain.plan import plan as config_plan

REPO_ROOT = Path(__file__).resolve().parent.parent
PAPER_SEEDS = 4  # pretraining seeds per method: the paper's 8 models are 4 of them × 2 probe seeds
PAPER_PROBE_SEEDS = 2
DATA_SECONDS = 2.0  # how long pretrain.plan times each config's data side


# ============================================================================ what the tables need


@dataclass(frozen=True)
class Dataset:
    """A dataset of the paper: its shard folder under ``--data-root`` and how to build it."""
    folder: str
    build: str  # the data_prep command (shown when the shards are missing)
    sizes: tuple[int, int]  # (probe train, probe test) images, for the run list when no manifest is there


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



@dataclass(frozen=True)
class StandIn:
    """A miniature's offline stand-in for a dataset: a data_prep builder run under --data-root when missing."""
    folder: str
    builder: str  # a name in data_prep.builders.BUILDERS
    inputs: dict
    encoding: EncodeOptions


# The miniature: each dataset's stand-in and the overrides that shrink each table's configs to a CPU.
MINIATURE_DATA = {
    "cifar10": StandIn("digits", "digits", {"size": 32, "test_fraction": 0.2, "seed": 0}, EncodeOptions("png")),
    "stl10": StandIn("skimage32", "skimage-crops", {"images": 400, "test_fraction": 0.2, "seed": 0},
                     EncodeOptions("jpg", resize=32)),
    "imagenet10": StandIn("skimage_crops", "skimage-crops", {"images": 200, "test_fraction": 0.2, "seed": 0},
                          EncodeOptions("jpg", resize=292)),
}
MINIATURE_STEPS = {"table2": 40, "table3": 20}
MINIATURE_OVERRIDES = {
    "table2": ["data.batch_size=32", "data.loader_workers=0", "data.split=train", "optim.lr=1e-3"],
    "table3": ["model.encoder=dcgan", "model.depth=4", "model.kwargs.image_size=64", "data.images_per_batch=2",
               "data.perms_per_image=8", "data.loader_workers=0", "train.bf16=false", "train.channels_last=false"],
}
MINIATURE_PROBE_EPOCHS = 10
MINIATURE_SEEDS = 2


# ============================================================================ 1. the run list


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
class RunList:
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
    return data_root / (MINIATURE_DATA[dataset].folder if miniature else DATASETS[dataset].folder)


def build_run_list(table: str, data_root: str | os.PathLike, out: str | os.PathLike, *, seeds: int = PAPER_SEEDS,
               probe_seeds: int = PAPER_PROBE_SEEDS, miniature: bool = False, methods: list[str] | None = None) -> RunList:
    """Every pretraining run and probe of ``table``; reads only configs and (if there) manifests."""
    if table not in TABLES:
        raise ReproduceError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    if seeds < 1 or probe_seeds < 1:
        raise ReproduceError(f"--seeds and --probe-seeds must be >= 1, got {seeds} and {probe_seeds}")
    known = sorted({p.method for p in TABLES[table]})
    unknown = sorted(set(methods or []) - set(known))
    if unknown:
        raise ReproduceError(f"--methods {','.join(unknown)}: {table} has the methods {', '.join(known)}")
    data_root, out = Path(data_root).resolve(), Path(out).resolve()
    run_list = RunList(table, miniature, str(out))
    for pre in TABLES[table]:
        if methods and pre.method not in methods:
            continue
        for seed in range(seeds):
            name = f"{table}{'-mini' if miniature else ''}-{pre.method}-{pre.dataset}-seed{seed}"
            overrides = [f"data.shards={shard_dir(data_root, pre.dataset, miniature)}", f"run.seed={seed}",
                         f"run.name={name}", f"run.root={run_list.run_root}"]
            if miniature:
                steps = MINIATURE_STEPS[table]
                overrides += MINIATURE_OVERRIDES[table] + [f"train.steps={steps}", f"train.report_every={steps}",
                                                           f"train.checkpoint_every={steps}"]
                if pre.method == "supervised":
                    overrides.append(f"task.kwargs.num_classes={_class_count(shard_dir(data_root, pre.dataset, True))}")
            cfg = load_config(REPO_ROOT / pre.config, overrides)
            run_list.runs.append(PretrainRun(pre.method, pre.dataset, seed, pre.config, name, overrides,
                                         int(cfg.train.steps), int(cfg.train.num_workers)))
            for probe_on in pre.probes:
                data = shard_dir(data_root, probe_on, miniature)
                num_train, num_test = _probe_sizes(data, probe_on)
                run_list.probes.append(ProbeRun(
                    pre.method, pre.dataset, probe_on, seed, probe_seeds, name, str(data),
                    str(out / "probes" / f"{name}-on-{probe_on}"),
                    MINIATURE_PROBE_EPOCHS if miniature else PROBE_EPOCHS, num_train, num_test))
    return run_list


def _class_count(shards: Path) -> int:

    try:
        return len(read_manifest(shards)["class_names"])
    except ManifestError:
        return 10  # a dry run before the miniature's data exist: the run list only needs a number


def _probe_sizes(data: Path, dataset: str) -> tuple[int, int]:
    """(train, test) images of a probe dataset: from its manifest, else the dataset's usual sizes."""
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
        if not (folder / MANIFEST_NAME).is_file():
            stand_in = MINIATURE_DATA[dataset]
            print(f"building the miniature's {dataset} stand-in in {folder}", flush=True)
            try:
                build_shards(stand_in.builder, folder, stand_in.inputs, stand_in.encoding, workers=1, progress=False)
            except (OSError, ValueError, ImportError) as exc:
                raise ReproduceError(f"could not build {folder} with data_prep {stand_in.builder}: {exc}") from exc


def missing_shards(table: str, data_root: Path, methods: list[str] | None = None) -> dict[str, str]:
    """``{dataset: "no <dataset> shards in <folder>: build them with <command>"}`` for each dataset the
    table reads (full scale) whose shards are not under ``data_root``."""
    used = [p for p in TABLES[table] if not methods or p.method in methods]
    missing = {}
    for dataset in sorted({p.dataset for p in used} | {d for p in used for d in p.probes}):
        folder = shard_dir(data_root, dataset, False)
        try:
            read_manifest(folder)
        except ManifestError:
            missing[dataset] = (f"no {dataset} shards in {folder}: build them with "
                                f"{DATASETS[dataset].build.format(dir=folder)}")
    return missing


# ============================================================================ 2. the cost


def probe_flops(config: str, overrides: list[str], probe: ProbeRun) -> float:
    """Feature extraction (one forward pass per train and test image, cached) plus the linear probe."""


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


def add_costs(run_list: RunList) -> None:
    """Fill in every run's cost (:func:`pretrain.plan.plan` of its config, each config once) and
    every probe's FLOPs."""
    per_config: dict[tuple, object] = {}
    for run in run_list.runs:
        key = (run.config, *[o for o in run.overrides if not o.startswith(("run.", "data.shards="))])
        if key not in per_config:
            cfg = load_config(REPO_ROOT / run.config, run.overrides)
            per_config[key] = config_plan(cfg, tflops=run_list.tflops, name=run.config, data_seconds=DATA_SECONDS)
        cost = per_config[key]
        run.flops_per_step = cost.flops_per_step
        run.hours_at_data_rate = cost.hours_at_data_rate
    per_probe: dict[tuple, float] = {}
    for probe in run_list.probes:
        run = run_list.run(probe.run_name)
        key = (run.config, probe.dataset)
        if key not in per_probe:
            per_probe[key] = probe_flops(run.config, run.overrides, probe)
        probe.flops = per_probe[key]



def run_list_json(run_list: RunList) -> dict:
    """The run_list as JSON: ``{"table", "runs": [{"stage", "method", "seed", "config", "steps", "flops", ...}], "total_flops"}``."""
    runs = [{"stage": "pretrain", "method": r.method, "seed": r.seed, "config": r.config, "dataset": r.dataset,
             "steps": r.steps, "flops_per_step": r.flops_per_step, "flops": r.flops,
             "hours_at_data_rate": r.hours_at_data_rate, "name": r.name,
             "out": str(run_list.run_root / f"{r.name}-<time>"), "overrides": r.overrides, "status": r.status}
            for r in run_list.runs]
    runs += [{"stage": "probe", "method": p.method, "seed": p.seed, "config": run_list.run(p.run_name).config,
              "pretrained_on": p.pretrained_on, "dataset": p.dataset, "probe_seeds": p.probe_seeds,
              "steps": p.epochs * math.ceil(p.num_train / 256) * p.probe_seeds, "epochs": p.epochs,
              "flops": p.flops, "out": p.out, "status": p.status} for p in run_list.probes]
    total = sum(r["flops"] or 0.0 for r in runs)
    data_hours = sum(r.get("hours_at_data_rate") or 0.0 for r in runs)
    return {"table": run_list.table, "miniature": run_list.miniature, "runs": runs, "total_flops": total,
            "tflops": run_list.tflops, "hours": total / (run_list.tflops * 1e12) / 3600, "pretrain_hours_at_data_rate": data_hours}


def _flop_text(flops: float | None) -> str:
    if flops is None:
        return "?"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:,.1f} {unit}"
    return f"{flops:,.0f} FLOP"


def describe(run_list_dict: dict) -> str:
    """The run_list as text: one line a run, then the totals."""
    lines = [f"{run_list_dict['table']}{' (miniature)' if run_list_dict['miniature'] else ''}: "
             f"{sum(r['stage'] == 'pretrain' for r in run_list_dict['runs'])} pretraining runs, "
             f"{sum(r['stage'] == 'probe' for r in run_list_dict['runs'])} probes"]
    for r in run_list_dict["runs"]:
        if r["stage"] == "pretrain":
            per_step = "?" if r["flops_per_step"] is None else f"{r['flops_per_step'] / 1e9:,.1f} GFLOP/step"
            data = "?" if r["hours_at_data_rate"] is None else f"{r['hours_at_data_rate']:,.1f} h"
            lines.append(f"  pretrain {r['method']:<10} {r['dataset']:<10} seed {r['seed']}  {r['config']}  "
                         f"{r['steps']:,} steps × {per_step} = {_flop_text(r['flops'])}, data side {data}  [{r['status']}]  {r['out']}")
        else:
            lines.append(f"  probe    {r['method']:<10} {r['pretrained_on']}→{r['dataset']:<10} seed {r['seed']}  "
                         f"{r['probe_seeds']} probe seeds × {r['epochs']} epochs = {_flop_text(r['flops'])}  [{r['status']}]  {r['out']}")
    hours = run_list_dict["hours"]
    gpu_time = f"{hours:,.1f} GPU-hours" if hours >= 1 else f"{hours * 60:,.1f} GPU-minutes"
    lines.append(f"total {_flop_text(run_list_dict['total_flops'])} = {gpu_time} at a "
                 f"sustained {run_list_dict['tflops']:g} TFLOP/s (--tflops; default 40% of an H200's dense bf16 peak); "
                 f"the pretraining's data side at its measured rate per core, with each config's loader cores: "
                 f"{run_list_dict['pretrain_hours_at_data_rate']:,.1f} hours")
    return "\n".join(lines)


