"""Distributed pretraining on Ray Train (V2): the driver, then the loop every worker runs.

Reads top to bottom:

1. :func:`launch` (driver): validate the config, make the run directory, start or join Ray, run a
   ``TorchTrainer`` with ``FailureConfig(max_failures)``; re-running with the same run directory
   continues from its latest checkpoint (Ray Train restores it from the storage snapshot).
2. :func:`train_loop_per_worker` (each rank): build the task (encoder + heads + estimator, η
   included) and wrap it whole in DDP, so η's gradient is averaged like every other parameter and
   η stays identical on every rank; restore a checkpoint if Ray hands one over; then step.
3. Every ``train.report_every`` steps the metrics are all-reduced, η is gathered from every rank
   and compared (a difference is an error), rank 0 writes TensorBoard and ``metrics.jsonl``, and
   every rank calls ``ray.train.report`` (a barrier). Every ``train.checkpoint_every`` steps rank 0
   attaches a checkpoint with everything needed to continue exactly: weights, η, optimiser states,
   step, every rank's RNG state and data position, the config and the permutation set.

A non-finite loss stops every rank before the bad update: ``nonfinite.json`` in the run directory
says where, the last good checkpoint stays the latest, and :func:`launch` raises
:class:`TrainingStopped` with a one-line message.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pretrain import dist, fatal, preflight
from pretrain.checkpoint import (
    CONFIG_FILE,
    build_encoder_from_config,
    capture_rng,
    checkpoint_dir_name,
    load_checkpoint,
    load_task_state,
    restore_rng,
    save_checkpoint,
)
from pretrain.config import from_plain, to_plain, validate
from pretrain.run_lock import run_dir_lock
from pretrain.tasks import spec as task_spec

NONFINITE_FILE = "nonfinite.json"
METRICS_FILE = "metrics.jsonl"
CRASH_MARKER = ".crashed_at_step"


class TrainingStopped(RuntimeError):
    """Training stopped on a non-finite loss; the message names the step and the last checkpoint."""


# ============================================================================ driver


@dataclass
class LaunchResult:
    run_dir: Path
    result: Any  # ray.train.Result


def new_run_dir(cfg: DictConfig) -> Path:
    """``<run.root>/<run.name>-<YYYYmmdd-HHMMSS>`` (absolute; a suffix keeps it unique)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.run.root).resolve() / f"{cfg.run.name}-{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    return run_dir


def launch(cfg: DictConfig, *, address: str | None = None, run_dir: str | os.PathLike | None = None,
           ray_init_kwargs: dict | None = None, show_progress: bool = True) -> LaunchResult:
    """Run (or continue) a pretraining run and return its run directory and Ray result.

    ``run_dir``: an existing run directory to continue (``--resume``) or a new one to use;
    None makes ``<run.root>/<run.name>-<time>``. Config errors raise ``ConfigError`` before Ray
    starts. ``address``: a Ray cluster to join; None starts a local Ray (unless one is running).
    ``show_progress``: print the run directory and one line per report (:mod:`pretrain.progress`).
    One-line errors: ``ConfigError`` (before Ray starts, or when the cluster lacks the resources),
    ``RunDirInUse`` (another driver holds the run directory), ``fatal.RunFailed`` (an error in the
    workers that no retry can fix), :class:`TrainingStopped` (a non-finite loss).
    """
    validate(cfg)
    preflight.check(cfg, Path(run_dir).resolve() if run_dir is not None else None)
    run_dir = Path(run_dir).resolve() if run_dir is not None else new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        return _launch_locked(cfg, run_dir, address, ray_init_kwargs, show_progress)


def _launch_locked(cfg: DictConfig, run_dir: Path, address, ray_init_kwargs, show_progress) -> LaunchResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pretrain.progress import ProgressLine, follow
    from pretrain.tracking import Tracking

    (run_dir / NONFINITE_FILE).unlink(missing_ok=True)
    fatal.clear(run_dir)
    # Ray's experiment directory is <storage>/<run dir name>: the run directory itself by default.
    storage = Path(cfg.run.storage_path).resolve() if cfg.run.storage_path else run_dir.parent
    resume = preflight.resume_point(cfg, storage / run_dir.name)
    OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
    if show_progress and (resume.path or resume.skipped):
        print(resume.describe(), flush=True)

    if not ray.is_initialized():
        init_address, init_kwargs = preflight.ray_init_args(address, ray_init_kwargs)
        ray.init(address=init_address, **init_kwargs)
        if address is None:
            preflight.warn_if_not_loopback()
    use_gpu = cfg.train.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    resources = {"CPU": cfg.train.threads_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    preflight.wait_for_resources(cfg.train.num_workers, resources, cfg.train.resource_wait_s)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_plain(cfg), "run_dir": str(run_dir),
                           "resume": {"path": resume.path and str(resume.path), "step": resume.step,
                                      "skipped": [s.split(":")[0] for s in resume.skipped]}},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            # the driver prints readable progress (pretrain.progress); Ray's INFO lines drown it
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    if show_progress:
        print(f"run directory: {run_dir}", flush=True)
    tracking = Tracking(cfg, run_dir, run_dir / METRICS_FILE)
    listeners = tracking.listeners()
    if show_progress:
        per_image = cfg.data.perms_per_image if task_spec(cfg.task.kind).uses_permutations else 1
        listeners.insert(0, ProgressLine(cfg.train.steps, per_image))
    succeeded = False
    try:
        with follow(run_dir / METRICS_FILE, listeners):
            try:
                result = trainer.fit()
            except Exception:
                if fatal.recorded(run_dir) is None:
                    raise
        succeeded = not (run_dir / NONFINITE_FILE).is_file() and fatal.recorded(run_dir) is None
    finally:
        tracking.finish(succeeded)
    if (message := fatal.recorded(run_dir)) is not None:
        raise fatal.RunFailed(message)
    stopped = run_dir / NONFINITE_FILE
    if stopped.is_file():
        info = json.loads(stopped.read_text())
        raise TrainingStopped(
            f"non-finite loss ({info['loss']}) at step {info['step']}: stopped before applying it; "
            f"last good checkpoint: {info['last_checkpoint'] or 'none'} (run dir {run_dir})")
    return LaunchResult(run_dir, result)


# ============================================================================ worker


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point: one DDP rank of the pretraining loop (see the module docstring)."""
    from pretrain.progress import quiet_ray_report_logs

    quiet_ray_report_logs()
    cfg = from_plain(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    if fatal.recorded(run_dir) is not None:  # Ray restarted the group after an error no retry can fix
        return
    with fatal.guard(run_dir, dist.rank(), dist.world_size()):
        _train_loop(cfg, run_dir, loop_config["resume"])


def _train_loop(cfg: DictConfig, run_dir: Path, resume: dict) -> None:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(cfg.train.threads_per_worker)
    rank, world = dist.rank(), dist.world_size()
    device = ray.train.torch.get_device()

    # ---- the task: same initial weights on every rank (DDP also broadcasts rank 0's) ----------
    torch.manual_seed(cfg.run.seed)
    permutations = permutations_of(cfg)
    task = build_task_from_config(cfg, permutations).to(device)
    main_opt, eta_opt = build_optimizers(cfg, task)

    # ---- restore, or seed each rank's own RNG stream (dropout, marginal pairs) -----------------
    step, position = 0, {"epoch": 0, "batch": 0}
    seed_rank(cfg.run.seed, rank)
    last_checkpoint = None
    payload = restore_payload(ray.train.get_checkpoint(), resume, device)
    if payload is not None:
        if len(payload["rng"]) != world:
            raise fatal.FatalError(f"checkpoint {payload['path']} was written by {len(payload['rng'])} ranks; "
                                   f"resume with train.num_workers={len(payload['rng'])}", every_rank=True)
        load_task_state(task, payload["encoder"], payload["task"])
        main_opt.load_state_dict(payload["optimizer"]["main"])
        if eta_opt is not None:
            eta_opt.load_state_dict(payload["optimizer"]["eta"])
        if payload["permutations"] is not None:
            permutations = payload["permutations"]
        step, position = payload["step"], payload["data_position"][rank]
        restore_rng(payload["rng"][rank])
        last_checkpoint = payload["path"]
    if cfg.train.channels_last:
        task = task.to(memory_format=torch.channels_last)
    if cfg.train.sync_batchnorm and device.type == "cuda":
        task = nn.SyncBatchNorm.convert_sync_batchnorm(task)
    model = wrap_ddp(task, device)
    model.train()

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step)

    # ---- the loop ------------------------------------------------------------------------------
    stream = batch_stream(cfg, permutations, rank, world, position, pin_memory=device.type == "cuda")
    window = MetricWindow()
    t_window = time.perf_counter()
    while step < cfg.train.steps:
        t0 = time.perf_counter()
        batch, next_position = next(stream)
        batch = to_device(batch, device)
        t_data = time.perf_counter() - t0

        maybe_crash(cfg, run_dir, step, rank, world)
        out = train_step(model, task, batch, step, main_opt, eta_opt, bf16=cfg.train.bf16)
        if not out["finite"]:
            if rank == 0:
                (run_dir / NONFINITE_FILE).write_text(json.dumps(
                    {"step": step, "loss": out["global_loss"], "last_checkpoint": last_checkpoint}))
            ray.train.report({"step": step, "nonfinite": 1})
            return
        step += 1
        position = next_position
        window.add(out["metrics"], samples=batch_size_of(batch), data_s=t_data,
                   step_s=time.perf_counter() - t0)

        if step % cfg.train.report_every == 0 or step == cfg.train.steps:
            metrics = window.reduce(world, time.perf_counter() - t_window)
            metrics.update(eta_across_ranks(task))
            metrics.update({"step": step, "lr/main": main_opt.param_groups[0]["lr"]})
            if eta_opt is not None:
                metrics["lr/eta"] = eta_opt.param_groups[0]["lr"]
            if writer is not None:
                log_rank0(writer, run_dir, metrics, step, batch, cfg)
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                last_checkpoint = report_with_checkpoint(
                    cfg, run_dir, metrics, step, task, main_opt, eta_opt, position, permutations)
            else:
                ray.train.report(metrics)
            window = MetricWindow()
            t_window = time.perf_counter()
    if writer is not None:
        writer.close()


# ============================================================================ building blocks


def restore_payload(ray_checkpoint, resume: dict, device: torch.device) -> dict | None:
    """The checkpoint to continue from: Ray's when it is newer than where the run resumed (a restart
    after a worker failure in this run), else the newest intact one the driver chose, else None."""
    from pretrain.checkpoint import step_of

    path = resume["path"]
    if ray_checkpoint is not None:
        name = Path(ray_checkpoint.path).name
        if name not in resume["skipped"] and (step_of(name) or 0) > resume["step"]:
            path = None
    try:
        if path is not None:
            return load_checkpoint(path, map_location=device)
        if ray_checkpoint is None or Path(ray_checkpoint.path).name in resume["skipped"]:
            return None
        with ray_checkpoint.as_directory() as ckpt_dir:
            return load_checkpoint(ckpt_dir, map_location=device)
    except (OSError, ValueError) as exc:
        raise fatal.FatalError(str(exc), every_rank=True) from None


def build_task_from_config(cfg: DictConfig, permutations: torch.Tensor | None) -> nn.Module:
    """Encoder from ``model``, task from ``task`` (heads, critic and estimator incl. η)."""
    from pretrain.tasks import build_task

    encoder = build_encoder_from_config(cfg.model)
    return build_task(
        cfg.task.kind, encoder,
        estimator=cfg.task.estimator,
        estimator_kwargs=dict(cfg.task.estimator_kwargs) or None,
        num_permutations=cfg.data.num_permutations,
        **dict(cfg.task.kwargs),
    )


def permutations_of(cfg: DictConfig) -> torch.Tensor | None:
    """The jigsaw permutation set, int64 [data.num_permutations, 9]; None for tasks without one.

    The same set for every ``run.seed`` (the paper's seeds share one set): the committed one, or
    ``data.permutations``.
    """
    if not task_spec(cfg.task.kind).uses_permutations:
        return None
    from data_prep.jigsaw import permutation_set

    return torch.as_tensor(permutation_set(cfg.data.permutations, cfg.data.num_permutations)[0])


def build_optimizers(cfg: DictConfig, task: nn.Module):
    """Adam on encoder + heads (``optim.lr``) and a separate Adam on η (``optim.eta_lr``).

    η gets its own optimiser so that Algorithm 1's ``n_critic`` schedule can step it less often
    without Adam's moments moving it on the steps in between. Returns ``(main, eta or None)``.
    """
    o = cfg.optim
    betas = (o.beta1, o.beta2)
    main = torch.optim.Adam(list(task.main_parameters()), lr=o.lr, betas=betas, weight_decay=o.weight_decay)
    eta_params = list(task.eta_parameters())
    eta = torch.optim.Adam(eta_params, lr=o.eta_lr, betas=betas) if eta_params else None
    return main, eta


def seed_rank(seed: int, rank: int) -> None:
    """Seed Python, NumPy and torch for this rank (distinct streams per rank)."""
    import random

    import numpy as np

    s = seed * 1000 + rank + 1
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def wrap_ddp(task: nn.Module, device: torch.device) -> nn.Module:
    """The whole task in DDP (η included) when there is more than one rank; else the task."""
    if not dist.is_distributed():
        return task
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(task, device_ids=ids)


def train_step(model: nn.Module, task: nn.Module, batch: dict, step: int,
               main_opt: torch.optim.Optimizer, eta_opt: torch.optim.Optimizer | None,
               *, bf16: bool = False) -> dict:
    """One optimiser step; ``step`` counts from 0 (Algorithm 1's η schedule reads it).

    The loss is all-reduced before ``backward``: if it is non-finite on any rank every rank
    returns ``finite=False`` without updating. Returns ``{"finite", "global_loss", "metrics"}``
    with this rank's detached metrics (floats).
    """
    device_type = next(task.parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        out = model(batch)
    loss = out["loss"]
    global_loss = dist.all_reduce_mean_detached(loss.float())
    if not torch.isfinite(global_loss):
        return {"finite": False, "global_loss": float(global_loss), "metrics": {}}
    main_opt.zero_grad(set_to_none=True)
    if eta_opt is not None:
        eta_opt.zero_grad(set_to_none=True)
    loss.backward()
    main_opt.step()
    estimator = getattr(task, "estimator", None)
    if eta_opt is not None and (not hasattr(estimator, "eta_step_due") or estimator.eta_step_due(step)):
        eta_opt.step()
    metrics = {k: float(v) for k, v in out.items() if k != "loss" and torch.is_tensor(v) and v.numel() == 1}
    metrics["loss"] = float(loss.detach())
    return {"finite": True, "global_loss": float(global_loss), "metrics": metrics}


class MetricWindow:
    """Sums of per-step metrics and timings over one report window on this rank."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.samples = 0
        self.data_s = 0.0
        self.step_s = 0.0

    def add(self, metrics: dict, *, samples: int, data_s: float, step_s: float) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.samples += samples
        self.data_s += data_s
        self.step_s += step_s

    def reduce(self, world: int, wall_s: float) -> dict:
        """Window means all-reduced over ranks (one collective), plus throughput and data wait."""
        keys = sorted(self.sums)
        local = torch.tensor([self.sums[k] / max(self.steps, 1) for k in keys]
                             + [self.data_s / max(self.step_s, 1e-12)], dtype=torch.float64)
        mean = dist.all_reduce_mean_detached(local).tolist()
        out = dict(zip(keys, mean[:-1]))
        out["data_wait_fraction"] = mean[-1]
        out["samples_per_s"] = self.samples * world / max(wall_s, 1e-12)
        return out


def eta_across_ranks(task: nn.Module) -> dict:
    """η of every rank (``eta/rank<r>``); raise if they differ at all.

    η lives in the DDP-wrapped task, so its averaged gradient and its Adam state are the same on
    every rank; any difference means the ranks have diverged and the run is not what it claims.
    """
    eta = getattr(getattr(task, "estimator", None), "eta", None)
    if not torch.is_tensor(eta) or eta.numel() != 1:
        return {}
    local = eta.detach().reshape(1).to(torch.float64)
    values = dist.all_gather_cat(local.clone()).cpu().tolist()
    if any(v != values[0] for v in values):
        raise RuntimeError(f"eta differs across ranks: {values}; the DDP replicas have diverged")
    # "eta" is the current value (the window mean the task reported would lag behind it)
    return {"eta": values[0], **{f"eta/rank{r}": v for r, v in enumerate(values)}}


def report_with_checkpoint(cfg, run_dir, metrics, step, task, main_opt, eta_opt, position, permutations):
    """Gather every rank's RNG state and data position; rank 0 writes the checkpoint; all report.

    Returns the checkpoint directory's name.
    """
    import ray.train
    from ray.train import Checkpoint

    rng, positions = gather_objects(capture_rng()), gather_objects(position)
    name = checkpoint_dir_name(step)
    if dist.rank() != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return name
    with tempfile.TemporaryDirectory(prefix="pretrain-ckpt-") as tmp:
        save_checkpoint(tmp, step=step, config=to_plain(cfg), task=task, optimizer=main_opt,
                        eta_optimizer=eta_opt, rng=rng, data_position=positions,
                        permutations=permutations)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
    return name


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (a list of one without a process group)."""
    if not dist.is_distributed():
        return [obj]
    out = [None] * dist.world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def log_rank0(writer, run_dir: Path, metrics: dict, step: int, batch: dict, cfg: DictConfig) -> None:
    """TensorBoard scalars (every metric) and ``metrics.jsonl``; an input grid now and then."""
    for k, v in metrics.items():
        if k != "step":
            writer.add_scalar(k, v, step)
    first_report = step <= cfg.train.report_every
    if first_report or (cfg.train.image_every and step % cfg.train.image_every < cfg.train.report_every):
        writer.add_image("inputs", task_spec(cfg.task.kind).preview(batch), step)
    writer.flush()
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(metrics) + "\n")


def maybe_crash(cfg: DictConfig, run_dir: Path, step: int, rank: int, world: int) -> None:
    """Fault injection for tests: the last rank exits hard, once per run, at ``train.crash_at_step``."""
    if cfg.train.crash_at_step is None or step != cfg.train.crash_at_step or rank != world - 1:
        return
    marker = run_dir / CRASH_MARKER
    if marker.exists():
        return
    marker.write_text(str(step))
    os._exit(1)


# ============================================================================ data


def open_loader(cfg: DictConfig, permutations, rank: int, world: int, epoch: int, start_batch: int,
                pin_memory: bool = False):
    """The data_prep stream of this rank for one epoch, resuming after ``start_batch`` batches.

    The streams are seeded by (seed, epoch, rank, batch index), so skipping is exact: a resumed
    run reads the same batches an uninterrupted one would have read next.
    """
    d = cfg.data
    return task_spec(cfg.task.kind).open_stream(
        d, permutations, split=d.split, train=True, seed=cfg.run.seed, epoch=epoch,
        batches_per_epoch=d.batches_per_epoch, num_workers=d.loader_workers,
        rank=rank, world_size=world, skip_batches=start_batch, pin_memory=pin_memory)


def batch_stream(cfg: DictConfig, permutations, rank: int, world: int, position: dict,
                 pin_memory: bool = False) -> Iterator:
    """Endless ``(batch, position after it)`` over epochs, starting at ``position``.

    ``position = {"epoch": e, "batch": i}`` names the next batch (``i`` batches of epoch ``e``
    are done).
    """
    epoch, start = position["epoch"], position["batch"]
    while True:
        loader = open_loader(cfg, permutations, rank, world, epoch, start, pin_memory)
        index = start
        for batch in loader:
            index += 1
            yield batch, {"epoch": epoch, "batch": index}
        if index == 0:  # (a resume at the very end of an epoch legitimately reads nothing here)
            raise RuntimeError(f"rank {rank}: epoch {epoch} of {cfg.data.shards} gave no batches")
        epoch, start = epoch + 1, 0


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of ``batch`` on ``device`` (other values unchanged)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_size_of(batch: dict) -> int:
    """Samples in a batch: puzzles for jigsaw (``perm_index`` [P]) or images."""
    key = "perm_index" if "perm_index" in batch else "images"
    return int(batch[key].shape[0])
