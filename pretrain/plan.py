"""What a config costs before it runs: FLOPs per step, total PFLOPs, the data rate it needs, hours.

``python -m pretrain --config X --plan`` prints :func:`format_plan` of :func:`plan` without starting
Ray. Other tools (a whole-table dry run) call :func:`plan` on each config they would launch::

    from pretrain.config import load_config
    from pretrain.plan import plan, format_plan
    print(format_plan(plan(load_config("configs/jigsaw_eta_imagenet10.yaml"))))

FLOPs come from ``torch.utils.flop_counter`` on one batch of the config's real shape (forward,
backward and the optimiser step of one rank, times the ranks). The counter counts matrix products
and convolutions (a multiply-add is 2 FLOPs); elementwise work (activations, batch norm, Adam's
update) is not counted, so the hours are a floor for the accelerator side. The data side is
measured: the config's own decode and batch-making code, one thread, on the config's shards when
they exist here, else on synthetic images of the size the stream decodes.
"""
from __future__ import annotations

import argparse
import copy
import functools
import io
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from data_prep import infomax_stream, jigsaw, jigsaw_stream
from data_prep.manifest import ManifestError, read_manifest, shard_paths
from pretrain.config import ConfigError, load_config, validate
from pretrain.preflight import fit_to_local_cpus, local_cpus
from pretrain.tasks import spec
from pretrain.train import build_optimizers, build_task_from_config, permutations_of, run_schedule

# One H200 SXM: 989 TFLOP/s dense bf16 (NVIDIA's datasheet, without sparsity). A step of small
# convolutions reaches well under peak; 40% is the sustained figure we plan with.
H200_BF16_DENSE_TFLOPS = 989.0
DEFAULT_TFLOPS = 0.4 * H200_BF16_DENSE_TFLOPS


@dataclass
class Plan:
    """The cost of one config; every rate is for the whole run (all ranks together).

    flops_per_step: counted FLOPs of one optimiser step over all ranks. images_per_step: source
    images a step consumes (all ranks). tflops: the accelerator rate assumed (all ranks together).
    data_images_per_s_per_core: measured decode + batch rate of one core; data_cores: the cores the
    config gives the stream (``loader_workers`` per rank, at least 1, times the ranks).
    """

    config: str
    task: str
    encoder: str
    steps: int
    workers: int
    images_per_step: int
    flops_per_step: float
    total_pflops: float
    tflops: float
    images_per_s_needed: float
    hours_at_tflops: float
    data_images_per_s_per_core: float
    data_source: str
    data_cores: int
    hours_at_data_rate: float
    # --measure: seconds of one rank's step timed on this machine's CPU (None: not measured)
    measured_step_s: float | None = None
    measured_threads: int = 0

    @property
    def cores_to_keep_up(self) -> int:
        """Cores the data side needs so that the accelerators never wait."""
        return math.ceil(self.images_per_s_needed / self.data_images_per_s_per_core)


def plan(cfg: DictConfig, *, tflops: float = DEFAULT_TFLOPS, name: str | None = None,
         data_seconds: float = 2.0, measure: bool = False) -> Plan:
    """The cost :class:`Plan` of ``cfg`` (a loaded config) at ``tflops`` TFLOP/s over all ranks.

    Builds the task on the CPU, counts one step, and times the data side for about
    ``data_seconds``; ``measure`` also times a few steps of one rank on this machine's CPU
    (:func:`measure_step_s`). Needs no Ray and no shards (synthetic images stand in when they are absent).
    """
    workers = cfg.train.num_workers
    flops_rank = step_flops(cfg)
    flops = flops_rank * workers
    per_rank_images = cfg.data.images_per_batch if _is_jigsaw(cfg) else cfg.data.batch_size
    images_per_step = per_rank_images * workers
    steps = run_schedule(cfg)[0]
    total = flops * steps
    steps_per_s = tflops * 1e12 / flops
    rate, source = data_rate(cfg, seconds=data_seconds)
    cores = max(1, cfg.data.loader_workers) * workers
    return Plan(
        config=name or cfg.run.name, task=cfg.task.kind + (f"/{cfg.task.estimator}" if cfg.task.estimator else ""),
        encoder=cfg.model.encoder, steps=steps, workers=workers, images_per_step=images_per_step,
        flops_per_step=flops, total_pflops=total / 1e15, tflops=tflops,
        images_per_s_needed=steps_per_s * images_per_step,
        hours_at_tflops=total / (tflops * 1e12) / 3600,
        data_images_per_s_per_core=rate, data_source=source, data_cores=cores,
        hours_at_data_rate=steps * images_per_step / (rate * cores) / 3600,
        measured_step_s=measure_step_s(cfg) if measure else None,
        measured_threads=cfg.train.threads_per_worker if measure else 0)


def format_plan(p: Plan) -> str:
    """One line a person reads (the ``--plan`` output)."""
    return (f"{p.config}: {p.task}, {p.encoder}, {p.workers} worker(s), {p.steps:,} steps x "
            f"{p.flops_per_step / 1e9:,.1f} GFLOP = {p.total_pflops:.3g} PFLOP; "
            f"{_duration(p.hours_at_tflops)} at {p.tflops:,.0f} TFLOP/s, which needs "
            f"{p.images_per_s_needed:,.0f} images/s; data {p.data_images_per_s_per_core:,.0f} images/s "
            f"per core ({p.data_source}): {_duration(p.hours_at_data_rate)} on {p.data_cores} core(s), "
            f"{p.cores_to_keep_up} cores to keep up")


def format_bounds(p: Plan, gpu_here: bool | None = None) -> str:
    """The lines ``--plan`` prints under :func:`format_plan`: the two bounds side by side and what
    the run takes at least, then the CPU estimate of ``--measure`` or, on a machine with no GPU
    (``gpu_here``; None: ask torch), where to get one."""
    if gpu_here is None:
        gpu_here = torch.cuda.is_available()
    bounds = {"accelerator (counted FLOPs)": p.hours_at_tflops, "data": p.hours_at_data_rate}
    lines = [f"  bounds: accelerator {_duration(p.hours_at_tflops)} at {p.tflops:,.0f} TFLOP/s | data "
             f"{_duration(p.hours_at_data_rate)} on {p.data_cores} core(s); at least "
             f"{_duration(max(bounds.values()))} ({max(bounds, key=bounds.get)} bound)"]
    if p.measured_step_s is not None:
        hours = p.steps * p.measured_step_s / 3600
        lines.append(f"  measured on this machine's CPU: {p.measured_step_s:.3g} s a step (one rank, "
                     f"{p.measured_threads} thread(s)): {_duration(hours)} for {p.steps:,} steps with each rank on "
                     f"cores of its own, at least {_duration(max(hours, p.hours_at_data_rate))} with the data bound")
    elif not gpu_here:
        lines.append("  no GPU on this machine, so the accelerator bound is not this machine's: "
                     "--plan --measure times a few steps on its CPU")
    return "\n".join(lines)


def task_on_example_batch(cfg: DictConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.Optimizer | None, dict]:
    """The config's task in training mode (seeded by ``run.seed``), its optimisers and a synthetic
    batch of the config's shape already through ``host_prepare``: what one training step needs."""
    permutations = permutations_of(cfg)
    torch.manual_seed(cfg.run.seed)
    task = build_task_from_config(cfg, permutations)
    task.train()
    main_opt, eta_opt = build_optimizers(cfg, task)
    return task, main_opt, eta_opt, task.host_prepare(example_batch(cfg, permutations))


def measure_step_s(cfg: DictConfig, steps: int = 3) -> float:
    """Seconds of one training step (forward, backward, optimiser) of one rank on this machine's CPU
    with ``train.threads_per_worker`` torch threads, on a synthetic batch of the config's shape: the
    fastest of ``steps`` timed steps after one untimed (allocation, first-call costs)."""
    task, main_opt, eta_opt, batch = task_on_example_batch(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.train.threads_per_worker)
    times = []
    try:
        for _ in range(steps + 1):
            start = time.perf_counter()
            main_opt.zero_grad(set_to_none=True)
            if eta_opt is not None:
                eta_opt.zero_grad(set_to_none=True)
            task(batch)["loss"].backward()
            main_opt.step()
            if eta_opt is not None:
                eta_opt.step()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return min(times[1:])


def local_fit(cfg: DictConfig) -> str:
    """How a local run of ``cfg`` fits this machine's CPUs (``python -m pretrain`` without
    ``--address``): as it is, with fewer loader processes, or not at all."""
    cpus = local_cpus()
    try:
        note = fit_to_local_cpus(copy.deepcopy(cfg), cpus)
    except ConfigError as exc:
        return f"a local run here cannot start: {exc}"
    return f"a local run here: {note}" if note else f"a local run here fits this machine's {cpus} CPUs as configured"


MARKDOWN_HEADER = ("| config | task | encoder | workers | steps | PFLOP | time at {tflops:,.0f} TFLOP/s | images/s that needs "
                   "| data: images/s per core | cores to keep up |")


def markdown_row(p: Plan) -> str:
    """One row of :data:`MARKDOWN_HEADER`'s table (the README's cost table)."""
    return (f"| {p.config} | {p.task} | {p.encoder} | {p.workers} | {p.steps:,} | {p.total_pflops:.3g} | "
            f"{_duration(p.hours_at_tflops)} | {p.images_per_s_needed:,.0f} | "
            f"{p.data_images_per_s_per_core:,.0f} ({p.data_source}) | {p.cores_to_keep_up} |")


def markdown_table(plans: list[Plan]) -> str:
    """The plans as a Markdown table (all at the first plan's TFLOP/s)."""
    header = MARKDOWN_HEADER.format(tflops=plans[0].tflops)
    return "\n".join([header, "|" + " --- |" * header.count(" | ") + " --- |", *map(markdown_row, plans)])


def _duration(hours: float) -> str:
    if hours >= 1:
        return f"{hours:,.1f} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} min"
    return f"{hours * 3600:.1f} s" if hours * 3600 >= 1 else f"{hours * 3600e3:.1f} ms"


def plan_dict(p: Plan) -> dict:
    """The plan as plain values (for JSON), the derived ``cores_to_keep_up`` included."""
    return {**asdict(p), "cores_to_keep_up": p.cores_to_keep_up}


# ----------------------------------------------------------------------------- FLOPs


def _is_jigsaw(cfg: DictConfig) -> bool:
    return spec(cfg.task.kind).uses_permutations


def example_batch(cfg: DictConfig, permutations: torch.Tensor | None, seed: int = 0) -> dict:
    """One host batch of exactly the layout and shape the config's stream yields for one rank.

    Jigsaw: random uint8 tiles through :func:`data_prep.jigsaw.make_batch` (``patches`` or, with
    ``data.unique_tiles``, ``tiles`` + ``perm_rows``). InfoMax: ``images`` [B, 3, size, size].
    """
    d = cfg.data
    rng = np.random.default_rng(seed)
    if _is_jigsaw(cfg):
        tiles = rng.integers(0, 256, (d.images_per_batch, 9, jigsaw.PATCH, jigsaw.PATCH, 3), dtype=np.uint8)
        labels = np.zeros(d.images_per_batch, dtype=np.int64)
        return jigsaw.make_batch(tiles, labels, permutations.numpy(), d.perms_per_image, rng,
                                 gather=not d.unique_tiles, device_augment=d.augment_on == "device")
    images = torch.from_numpy(rng.standard_normal((d.batch_size, 3, d.size, d.size), dtype=np.float32))
    return {"images": images, "label": torch.zeros(d.batch_size, dtype=torch.long)}


def step_flops(cfg: DictConfig) -> float:
    """Counted FLOPs of one training step of one rank (forward, backward, optimiser step)."""
    from torch.utils.flop_counter import FlopCounterMode

    task, main_opt, eta_opt, batch = task_on_example_batch(cfg)
    with FlopCounterMode(display=False) as counter:
        loss = task(batch)["loss"]
        loss.backward()
        main_opt.step()
        if eta_opt is not None:
            eta_opt.step()
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------- data rate


def data_rate(cfg: DictConfig, seconds: float = 2.0) -> tuple[float, str]:
    """(source images per second that one core turns into batches, where the images came from).

    Runs the config's own decode and batch-making functions on one thread for about ``seconds``:
    on samples of the config's shards when ``data.shards`` holds a manifest, else on synthetic
    images (292² JPEG for jigsaw, ``data.size``² PNG for InfoMax).
    """
    samples, source = _shard_samples(cfg)
    if samples is None:
        samples, source = _synthetic_samples(cfg), "synthetic"
    d = cfg.data
    if _is_jigsaw(cfg):
        permutations = permutations_of(cfg).numpy()
        decode = jigsaw_stream.decode_for_jigsaw
        collate = functools.partial(jigsaw_stream.collate_jigsaw, permutations=permutations,
                                    perms_per_image=d.perms_per_image, train=True, gather=not d.unique_tiles,
                                    device_augment=d.augment_on == "device")
        group = d.images_per_batch
    else:
        decode = functools.partial(infomax_stream.decode_small, size=d.size)
        collate = functools.partial(infomax_stream.collate_infomax, train=True)
        group = d.batch_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        done, i = 0, 0
        start = time.perf_counter()
        while done == 0 or time.perf_counter() - start < seconds:
            items = [decode(samples[(i + k) % len(samples)]) for k in range(group)]
            collate(items, rng)
            done, i = done + group, i + group
        return done / (time.perf_counter() - start), source
    finally:
        torch.set_num_threads(threads)


def _shard_samples(cfg: DictConfig, n: int = 64) -> tuple[list | None, str]:
    """Up to ``n`` raw samples of the config's split, or ``(None, "")`` when the shards are not here."""
    try:
        urls = shard_paths(cfg.data.shards, cfg.data.split, read_manifest(cfg.data.shards))
    except (ManifestError, OSError, ValueError):
        return None, ""
    import webdataset as wds

    samples = []
    for sample in wds.DataPipeline(wds.SimpleShardList(urls[:1]), wds.tarfile_to_samples()):
        samples.append(sample)
        if len(samples) == n:
            break
    return (samples or None), f"{Path(urls[0]).name}"


def _synthetic_samples(cfg: DictConfig, n: int = 16) -> list[dict]:
    """Smooth random pictures (JPEG noise would decode slower than photographs)."""
    from PIL import Image

    size, fmt, ext = (jigsaw.RESIZE, "JPEG", "jpg") if _is_jigsaw(cfg) else (cfg.data.size, "PNG", "png")
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append({"__key__": f"synthetic{k}", ext: buf.getvalue()})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m pretrain.plan CONFIG [CONFIG ...]``: the plan of each config, as lines or a table."""
    p = argparse.ArgumentParser(prog="python -m pretrain.plan", description="What each config costs "
                                "(the --plan of python -m pretrain, for many configs at once).")
    p.add_argument("configs", nargs="+", help="config files (e.g. configs/*.yaml)")
    p.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS,
                   help=f"sustained TFLOP/s of all ranks together (default {DEFAULT_TFLOPS:.1f}: 40%% of one H200)")
    p.add_argument("--markdown", action="store_true", help="one Markdown table (the README's) instead of lines")
    args = p.parse_args(argv)
    cfgs = []
    for path in args.configs:  # every config checked before the first is planned
        try:
            cfgs.append((Path(path).stem, load_config(path, [])))
            validate(cfgs[-1][1], check_shards=False)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"config error: {path}: {exc}", file=sys.stderr)
            return 2
    plans = [plan(cfg, tflops=args.tflops, name=name) for name, cfg in cfgs]
    print(markdown_table(plans) if args.markdown else "\n".join(map(format_plan, plans)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
