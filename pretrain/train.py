"""Distributed pretraining on Ray Train (V2): the driver, then the loop every worker runs.

Reads top to bottom:

1. :func:`launch` (driver): validate the config, make the run directory, fix the run's virtual shards
   V (a resumed run keeps its own), start or join Ray, run a ``TorchTrainer`` with
   ``FailureConfig(max_failures)`` on ``train.num_workers`` workers, or between ``train.min_workers``
   and it (:mod:`pretrain.elastic`); re-running with the same run directory continues from its latest
   checkpoint (Ray Train restores it from the storage snapshot), on any worker count that divides V. While it
   runs, the driver prints a progress line per report and feeds the trackers, both read from
   ``metrics.jsonl`` (:mod:`console.progress`, :mod:`pretrain.tracking`).
2. :func:`train_loop_per_worker` (each rank): build the task (encoder + heads + estimator, η
   included) and wrap it whole in DDP, so η's gradient is averaged like every other parameter and
   η stays identical on every rank; restore a checkpoint if Ray hands one over; then step: each step
   runs this rank's V/W virtual shards, one micro-batch each (:mod:`pretrain.virtual_shards`).
3. Every ``train.report_every`` steps the metrics (kept on the device in between) are all-reduced,
   η is gathered from every rank and compared (a difference is an error), and rank 0 writes
   TensorBoard and ``metrics.jsonl``; the driver follows that file. Only every
   ``train.checkpoint_every`` steps do the ranks call ``ray.train.report`` (which waits for the
   controller's next poll): rank 0 attaches a checkpoint with everything needed to continue exactly:
   weights, η, optimiser states, step, every virtual shard's RNG state and data position, the config
   and the permutation set.

A step reads nothing back from the device, so the host runs ahead of an accelerator; batches are
checked and their pair masks built on the host (``Task.host_prepare``) before they move to the device.

A non-finite loss stops every rank before the bad update: from that step on the fused optimisers skip
on a flag that stays on the device (:mod:`pretrain.step_flags`), the next report reads it and stops
every rank there, ``nonfinite.json`` in the run directory says where, the last good checkpoint stays
the latest, and :func:`launch` raises :class:`TrainingStopped` with a one-line message.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import storage
from data_prep import shard_stream
from pretrain import dist, estimators, fatal, interrupt, online_probe, preflight, virtual_shards
from pretrain.checkpoint import (
    capture_rng,
    checkpoint_dirs,
    load_checkpoint,
    load_task_state,
    restore_rng,
    save_checkpoint,
)
from pretrain.config import ConfigError, from_plain, to_plain, validate
from console.progress import WALL_TIME
from pretrain.models import build_encoder_from_config
from pretrain.run_dir import (
    CONFIG_FILE,
    CRASH_MARKER,
    METRICS_FILE,
    NONFINITE_FILE,
    TENSORBOARD_DIR,
    checkpoint_dir_name,
    new_run_dir,
    ray_storage_path,
    run_home,
)
from pretrain.run_lock import run_dir_lock
from pretrain.step_flags import StepFlags
from pretrain.tasks import spec as task_spec

# Ray Train V2's controller reads its poll interval from this variable of the driver's environment
# when fit() starts it (ray/train/v2/_internal/constants.py, ENV_VARS_TO_PROPAGATE).
CONTROLLER_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


class TrainingStopped(RuntimeError):
    """Training stopped on a non-finite loss; the message names the step and the last checkpoint."""


# ============================================================================ driver


@dataclass
class LaunchResult:
    run_dir: Path | str  # a str when the run lives at an s3:// or gs:// URL
    result: Any  # ray.train.Result


def launch(cfg: DictConfig, *, address: str | None = None, run_dir: str | os.PathLike | None = None,
           ray_init_kwargs: dict | None = None) -> LaunchResult:
    """Run (or continue) a pretraining run and return its run directory and Ray result.

    ``run_dir``: an existing run directory to continue (``--resume``) or a new one to use;
    None makes ``<run.root>/<run.name>-<time>``. Config errors raise ``ConfigError`` before Ray
    starts. ``address``: a Ray cluster to join; None starts a local Ray (unless one is running),
    whose CPUs the loader processes are fitted to (:func:`preflight.fit_to_local_cpus`).
    Prints the run directory at the start, one line per report (:mod:`console.progress`) and a
    summary at the end (:mod:`pretrain.summary`); Ray's own messages go to ``ray.log`` there.
    One-line errors: ``ConfigError`` (before Ray starts, or when the cluster lacks the resources),
    ``RunDirInUse`` (another driver holds the run directory), ``fatal.RunFailed`` (an error in the
    workers that no retry can fix), :class:`TrainingStopped` (a non-finite loss),
    :class:`interrupt.Interrupted` (SIGINT or SIGTERM: :mod:`pretrain.interrupt`). A new run that
    ends on one of the first or the last before its first report leaves no run directory behind.
    """
    started = time.monotonic()
    validate(cfg)
    if not preflight.joins_cluster(address) and not _ray_running():
        note = preflight.fit_to_local_cpus(cfg, preflight.local_cpus(ray_init_kwargs))
        if note:
            print(note, flush=True)
    preflight.check(cfg, storage.resolve(run_dir) if run_dir is not None else None)
    new = run_dir is None
    if new:
        for earlier, info in interrupt.interrupted_runs(storage.resolve(run_home(cfg.run)), cfg.run.name):
            print(f"note: {earlier} was interrupted at step {info.get('step')}; this starts a new run "
                  f"(to continue that one instead: {interrupt.continue_command(earlier)})", flush=True)
    run_dir = storage.resolve(run_dir) if run_dir is not None else new_run_dir(cfg)
    run_dir = storage.as_path(run_dir)
    storage.makedirs(run_dir)
    try:
        with run_dir_lock(run_dir):
            return _launch_locked(cfg, run_dir, address, ray_init_kwargs, started)
    except (ConfigError, interrupt.Interrupted, KeyboardInterrupt):
        if new and not storage.isfile(storage.join(run_dir, METRICS_FILE)) and not checkpoint_dirs(run_dir):
            storage.remove_tree(run_dir)  # nothing in it worth keeping: no `ls runs/` finds it
        raise


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


class ReportClock:
    """Progress listener: the last step reported in this launch, its records, and when the last
    checkpoint was written (or the launch began): how much work an interruption would lose."""

    def __init__(self, step: int, checkpoint_every: int, total_steps: int):
        self.step, self.records = step, []
        self.checkpoint_every, self.total = checkpoint_every, total_steps
        self.checkpoint_time = time.time()

    def __call__(self, record: dict) -> None:
        if "step" not in record or "samples_per_s" not in record:
            return
        self.records.append(record)
        self.step = int(record["step"])
        if self.step % self.checkpoint_every == 0 or self.step == self.total:
            self.checkpoint_time = record.get(WALL_TIME, time.time())

    def work_since_checkpoint_s(self) -> float:
        return time.time() - self.checkpoint_time


def _launch_locked(cfg: DictConfig, run_dir: Path | str, address: str | None, ray_init_kwargs: dict | None,
                   started: float) -> LaunchResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from console.progress import ProgressLine, follow
    from pretrain import ray_output, summary
    from pretrain.elastic import ShardTrainer
    from pretrain.tracking import MLFLOW_RUN_ID_FILE, Tracking, one_record_per_step

    storage.remove(storage.join(run_dir, NONFINITE_FILE))
    interrupt.clear(run_dir)
    # Ray's experiment directory is <storage>/<run dir name>: the run directory itself by default.
    # Ray Train writes to a URL with its own storage layer (pyarrow.fs), from the same credentials.
    experiments = ray_storage_path(cfg.run, run_dir)
    checkpoints = storage.join(experiments, storage.basename(run_dir))  # where Ray Train keeps them
    resume = preflight.resume_point(cfg, checkpoints)
    # a run keeps its V: a resumed run takes its checkpoint's, a new one train.num_workers when unset
    cfg = OmegaConf.merge(cfg, {"data": {"virtual_shards": resume.virtual_shards or virtual_shards.count(cfg)}})
    preflight.check_workers_divide_shards(cfg)
    storage.write_text(storage.join(run_dir, CONFIG_FILE), OmegaConf.to_yaml(cfg, resolve=True))
    print(f"run directory: {run_dir}", flush=True)
    if resume.path or resume.skipped:
        print(resume.describe(), flush=True)
    metrics_file = storage.join(run_dir, METRICS_FILE)
    # the driver's TensorBoard text/hparams and MLflow id: in the run directory, or for a URL in a
    # local mirror pushed there at the end
    driver_files = storage.LocalMirror(run_dir, fetch=(MLFLOW_RUN_ID_FILE, CONFIG_FILE))
    # before Ray: a bad tracking URI fails fast
    tracking = Tracking(cfg, Path(driver_files.dir), metrics_file, checkpoints=run_dir)
    total_steps = run_schedule(cfg)[0]
    clock = ReportClock(resume.step, cfg.train.checkpoint_every, total_steps)
    per_image = cfg.data.perms_per_image if task_spec(cfg.task.kind).uses_permutations else 1
    owns_ray = not ray.is_initialized()
    asked: list[int] = []  # the signal the workers were asked to stop for

    def on_signal(signum: int, count: int) -> None:
        """A signal during training: ask for a last checkpoint if the last is old, else stop now."""
        name = interrupt.signal_name(signum)
        if count == 1 and clock.work_since_checkpoint_s() >= cfg.train.interrupt_checkpoint_s:
            interrupt.request_stop(run_dir, signum)
            asked.append(signum)
            print(f"{name}: the workers write a checkpoint at their next report, then stop "
                  f"({name} again stops at once)", file=sys.stderr, flush=True)
            return
        raise interrupt.Interrupted(signum)

    succeeded, message = False, None
    stopped = storage.join(run_dir, NONFINITE_FILE)
    with interrupt.SignalWatch() as signals, ray_output.ray_to_log(
            os.path.join(driver_files.dir, ray_output.LOG_FILE)) as ray_log:
        try:  # from here on, every way out ends the tracking run and uploads the driver's files
            if owns_ray:
                where = (f"joining the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}"
                         if preflight.joins_cluster(address) else "starting a local Ray on this machine")
                print(f"{where} (Ray's own messages: {storage.join(run_dir, ray_output.LOG_FILE)}) ...", flush=True)
            t_ray = time.monotonic()
            preflight.init_ray(address, ray_init_kwargs)
            signals.install()  # ray.init put a SIGTERM handler of its own in place of ours
            ray_log.forward_workers()
            if owns_ray:
                print(f"Ray is up after {time.monotonic() - t_ray:.0f} s; starting {cfg.train.num_workers} "
                      f"worker(s)", flush=True)
            fatal.clear(run_dir)  # an earlier launch's record, in the run directory and in this Ray
            use_gpu = preflight.wait_for_workers(cfg.train.min_workers or cfg.train.num_workers, worker_cpus(cfg),
                                                 cfg.train.use_gpu, cfg.train.resource_wait_s,
                                                 gpus=cfg.train.gpus_per_worker)
            if cfg.train.bf16_grad_allreduce and not use_gpu:
                raise ConfigError("train.bf16_grad_allreduce needs GPUs (NCCL) and this cluster has none; "
                                  "set train.bf16_grad_allreduce=false")
            resources = {"CPU": worker_cpus(cfg)}
            if use_gpu:
                resources["GPU"] = cfg.train.gpus_per_worker
                preflight.check_gpu_workers(cfg.train.bf16, cfg.train.resource_wait_s)
            trainer = ShardTrainer(
                train_loop_per_worker,
                train_loop_config={"config": to_plain(cfg), "run_dir": str(run_dir),
                                   # a local folder: rank 0 writes checkpoints there itself (no copy by Ray)
                                   "checkpoints": None if storage.is_url(checkpoints) else str(checkpoints),
                                   "start": {"path": resume.path and str(resume.path), "step": resume.step}},
                scaling_config=ScalingConfig(num_workers=worker_range(cfg), use_gpu=use_gpu,
                                             resources_per_worker=resources,
                                             elastic_resize_monitor_interval_s=cfg.train.resize_every_s),
                torch_config=process_group_config(cfg, use_gpu),
                virtual_shards=cfg.data.virtual_shards,
                run_config=RunConfig(
                    name=storage.basename(run_dir),
                    storage_path=experiments,
                    failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                    # the driver prints readable progress (console.progress); Ray's INFO lines drown it
                    logging_config=LoggingConfig(log_level="WARNING"),
                ),
            )
            listeners = [ProgressLine(total_steps, per_image), clock, *tracking.listeners()]
            with follow(metrics_file, listeners), controller_poll(cfg.train.controller_poll_s):
                try:
                    result = signals.wait_for(trainer.fit, on_signal)
                except interrupt.Interrupted:
                    raise
                except Exception as exc:  # an error no retry fixes: one line (fatal.py), else Ray's error
                    message = fatal.recorded(run_dir) or fatal.find(exc, run_dir)
                    if message is None:
                        raise
            message = message or fatal.recorded(run_dir)
            if asked and clock.step >= total_steps:  # the run reached its end before the workers could stop early
                asked.clear()
                storage.remove(storage.join(run_dir, interrupt.STOP_FILE))
            if message is None and not asked and clock.step < total_steps and interrupt.preempted(run_dir):  # a worker's SIGTERM
                asked.append(signal.SIGTERM)  # ended a fixed-size run: as if the driver had been sent it
            succeeded = message is None and not storage.isfile(stopped) and not asked
        except interrupt.Interrupted as exc:
            if owns_ray:
                ray.shutdown()  # the workers and the controller with it (they belong to this driver)
            raise interrupted(run_dir, checkpoints, exc.signum, clock.step) from None
        finally:
            if owns_ray and ray.is_initialized():
                ray.shutdown()  # now, while what Ray says on its way out still goes to ray.log
            with contextlib.suppress(OSError):  # a store that is gone leaves the records as written
                one_record_per_step(metrics_file)  # the steps re-run after a worker restart were reported twice
            try:
                tracking.finish(succeeded, write_hparams=message is None)
                driver_files.push()
            except OSError:
                if succeeded:
                    raise
                # else the run's own error (or its one line) is what the user needs, not the full disk's echo
    if message is not None:
        raise fatal.RunFailed(message)
    if storage.isfile(stopped):
        info = json.loads(storage.read_text(stopped))
        raise TrainingStopped(
            f"non-finite loss ({info['loss']}) at step {info['step']}: stopped before applying it; "
            f"last good checkpoint: {info['last_checkpoint'] or 'none'} (run dir {run_dir})")
    if asked:
        raise interrupted(run_dir, checkpoints, asked[0], clock.step)
    curves = summary.write_curves(run_dir, summary.read_records(metrics_file), storage.basename(run_dir))
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    if checkpoint is not None and storage.is_url(str(run_dir)) and not storage.is_url(str(checkpoint)):
        checkpoint = storage.join(checkpoints, storage.basename(str(checkpoint)))  # the URL, not pyarrow's path
    for line in summary.summary_lines(clock.records, wall_s=time.monotonic() - started, samples_per_image=per_image,
                                      checkpoint=checkpoint, run_dir=run_dir, shards=cfg.data.shards, curves=curves):
        print(line, flush=True)
    return LaunchResult(run_dir, result)


def interrupted(run_dir, checkpoints, signum: int, step: int) -> interrupt.Interrupted:
    """The one-line :class:`interrupt.Interrupted` of a run stopped at ``step`` (recorded in the run
    directory): the step, the newest intact checkpoint, the command that continues the run."""
    from pretrain.checkpoint import newest_verified, step_of

    storage.remove(storage.join(run_dir, interrupt.STOP_FILE))
    newest, _ = newest_verified(checkpoints)
    name = interrupt.signal_name(signum)
    if newest is None:
        if step == 0:
            return interrupt.Interrupted(signum, f"interrupted ({name}) before the first step; nothing to continue")
        where = "no checkpoint yet (the run starts again from step 0)"
    else:
        where = f"last checkpoint {newest} (step {step_of(newest)})"
    interrupt.record(run_dir, signum, step, newest)
    return interrupt.Interrupted(signum, f"interrupted ({name}) at step {step}; {where}; continue with "
                                         f"`{interrupt.continue_command(run_dir)}`")


def process_group_config(cfg: DictConfig, use_gpu: bool):
    """Ray Train's process-group settings: gloo where ranks share a GPU (``train.gpus_per_worker`` < 1:
    NCCL refuses two ranks on one device), else Ray's choice (NCCL on GPUs, gloo on CPUs)."""
    from ray.train.torch import TorchConfig

    return TorchConfig(backend="gloo" if use_gpu and cfg.train.gpus_per_worker < 1 else None)


@contextlib.contextmanager
def controller_poll(seconds: float):
    """Set Ray Train's controller poll interval for the trainers started inside (then restore it)."""
    before = os.environ.get(CONTROLLER_POLL_ENV)
    os.environ[CONTROLLER_POLL_ENV] = str(seconds)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CONTROLLER_POLL_ENV, None)
        else:
            os.environ[CONTROLLER_POLL_ENV] = before


# ============================================================================ worker


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point: one DDP rank of the pretraining loop (see the module docstring)."""
    from console.progress import quiet_ray_report_logs

    quiet_ray_report_logs()
    cfg = from_plain(loop_config["config"])
    run_dir = loop_config["run_dir"]  # a local path or a URL
    if fatal.recorded(run_dir) is not None:  # Ray restarted the group after an error no retry can fix
        return
    with fatal.guard(run_dir, dist.rank(), dist.world_size()):
        _train_loop(cfg, run_dir, loop_config["start"], loop_config.get("checkpoints"))


def _train_loop(cfg: DictConfig, run_dir, start: dict, checkpoints: str | None = None) -> None:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(cfg.train.threads_per_worker)
    rank, world = dist.rank(), dist.world_size()
    device = ray.train.torch.get_device()
    dist.bind_device(device)
    if device.type == "cuda":
        cuda_math(cfg.train.deterministic)

    # ---- the task: same initial weights on every rank (DDP also broadcasts rank 0's) ----------
    torch.manual_seed(cfg.run.seed)
    permutations = permutations_of(cfg)
    task = build_task_from_config(cfg, permutations).to(device)
    main_opt, eta_opt = build_optimizers(cfg, task)
    probe = online_probe.from_config(cfg, task, device)  # None unless train.online_probe
    total_steps, peak_lr = run_schedule(cfg)

    # ---- this rank's virtual shards: restore them, or seed each one's own RNG stream (dropout) ---
    n_shards = virtual_shards.count(cfg)
    if n_shards % world:
        raise fatal.FatalError(f"{world} workers cannot share data.virtual_shards={n_shards}; run on one of "
                               f"{virtual_shards.divisors(n_shards)} workers", every_rank=True)
    shards = virtual_shards.owned(rank, world, n_shards)
    step, position = 0, {"epoch": 0, "batch": 0}
    rng = virtual_shards.seeded_rng(cfg.run.seed, shards)
    last_checkpoint = None
    source = checkpoint_to_restore(ray.train.get_checkpoint(), start)
    if source is not None:
        with source.as_directory() if hasattr(source, "as_directory") else contextlib.nullcontext(source) as ckpt_dir:
            step, position, rng, restored_perms, last_checkpoint = resume(ckpt_dir, task, main_opt, eta_opt,
                                                                          shards, n_shards, probe)
        permutations = restored_perms if restored_perms is not None else permutations
    if cfg.train.channels_last:
        task = task.to(memory_format=torch.channels_last)
    if cfg.train.sync_batchnorm and device.type == "cuda":
        task = nn.SyncBatchNorm.convert_sync_batchnorm(task)
    model = wrap_ddp(task, device, bf16_grad_allreduce=cfg.train.bf16_grad_allreduce,
                     deterministic=cfg.train.deterministic)
    if cfg.train.compile:
        model = compile_model(model, device)
    model.train()
    buffers = virtual_shards.StepBuffers(task) if len(shards) > 1 or world > 1 else None

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        logs = storage.LocalMirror(run_dir, fetch=(METRICS_FILE,))
        writer = SummaryWriter(os.path.join(logs.dir, TENSORBOARD_DIR), purge_step=step)

    # ---- the loop ------------------------------------------------------------------------------
    stream = batch_stream(cfg, permutations, shards, n_shards, position, pin_memory=pins_memory(cfg, device))
    window = MetricWindow(device)
    flags = StepFlags(device, main_opt, eta_opt, None if probe is None else probe.optimizer)
    t_window = time.perf_counter()
    noticed = False
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            host_batches, next_position = next(stream)
            batches = [to_device(task.host_prepare(b), device) for b in host_batches]
            window.data_s += time.perf_counter() - t0

            maybe_crash(cfg, run_dir, step, rank, world)
            for group in main_opt.param_groups:
                group["lr"] = lr_at(step, peak_lr, cfg.optim.warmup_steps)
            out = train_step(model, task, batches, step, main_opt, eta_opt, bf16=cfg.train.bf16, rng=rng,
                             buffers=buffers, notice=preemption_notice(), flags=flags)
            if probe is not None:
                out["metrics"].update(probe.step(batches[-1]))  # the last micro-batch's features
            step += 1
            position = next_position
            window.add(out["metrics"], samples=sum(batch_size_of(b) for b in batches))

            if step % cfg.train.report_every == 0 or step == total_steps:
                read = flags.read()  # the window's first read of the device: before anything of the report
                if read.nonfinite is not None:  # no optimiser has moved since that step, on any rank
                    if rank == 0:
                        storage.write_text(storage.join(run_dir, NONFINITE_FILE), json.dumps(
                            {**read.nonfinite, "last_checkpoint": last_checkpoint}))
                    ray.train.report({"step": read.nonfinite["step"], "nonfinite": 1})
                    return
                # a preemption notice on any rank (Ray drains its node): every rank checkpoints at this
                # report once, and trains on until the node goes (Ray then restarts from this checkpoint)
                preempted_now = read.notice and not noticed
                noticed = noticed or read.notice
                metrics = window.reduce(world, time.perf_counter() - t_window)
                metrics.update(eta_across_ranks(task))
                metrics.update({"step": step, "lr/main": main_opt.param_groups[0]["lr"], "workers": world})
                if eta_opt is not None:
                    metrics["lr/eta"] = eta_opt.param_groups[0]["lr"]
                stop = interrupt.stop_requested(run_dir, device)  # the driver or a worker got a signal
                checkpoint_now = (stop or preempted_now or step % cfg.train.checkpoint_every == 0
                                  or step == total_steps)
                if writer is not None:  # the files go up with every checkpoint, else at most every upload_every_s
                    log_rank0(writer, logs, metrics, step, host_batches[0], cfg,
                              upload_after_s=0.0 if checkpoint_now else cfg.train.upload_every_s)
                if checkpoint_now:
                    last_checkpoint = report_with_checkpoint(
                        cfg, checkpoints, metrics, step, task, main_opt, eta_opt, position, rng, permutations, probe)
                if stop:  # a worker's SIGTERM: recorded; in an elastic run that worker exits (Ray restarts)
                    interrupt.leave(run_dir, stop, step, last_checkpoint, elastic=cfg.train.min_workers is not None)
                    return
                window = MetricWindow(device)
                t_window = time.perf_counter()
    finally:  # every way out (the end, a non-finite stop, an error): the last curves reach the run directory
        if writer is not None:
            writer.close()
            logs.push()


# ============================================================================ building blocks


def checkpoint_to_restore(ray_checkpoint, start: dict):
    """What to continue from: Ray's checkpoint when it is newer than where this launch started (Ray
    restarted the workers after a failure in this run) and its checksum verifies, else the newest
    intact checkpoint the driver found on disk (``start["path"]``, a directory), else None. A damaged
    checkpoint that Ray's own record of the run still lists is never taken; one rewritten whole
    since (the run passed its step again) is."""
    from pretrain.checkpoint import CHECKPOINT_FILE, checksum_problem, step_of

    if ray_checkpoint is not None and (step_of(storage.basename(ray_checkpoint.path)) or 0) > start["step"]:
        if checksum_problem(storage.join(ray_checkpoint.path, CHECKPOINT_FILE)) is None:
            return ray_checkpoint
    return start["path"]


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
    Fused Adam (CPU and CUDA): one kernel per step instead of several per parameter, and its step
    counters stay on the parameters' device, where the unfused one reads them back every step.
    Both skip their update while the run's non-finite flag is set (:mod:`pretrain.step_flags`).
    """
    o = cfg.optim
    betas = (o.beta1, o.beta2)
    main = torch.optim.Adam(list(task.main_parameters()), lr=o.lr, betas=betas, weight_decay=o.weight_decay,
                            fused=True)
    eta_params = list(task.eta_parameters())
    eta = torch.optim.Adam(eta_params, lr=o.eta_lr, betas=betas, fused=True) if eta_params else None
    return main, eta


def run_schedule(cfg: DictConfig) -> tuple[int, float]:
    """``(optimiser steps, peak main lr)`` of the run of V virtual shards (:func:`virtual_shards.count`).

    ``optim.lr_scaling=none``: ``train.steps`` and ``optim.lr``. ``linear``/``sqrt``: the config is
    one shard's run and the V shards each take its batch, a V times larger global batch:
    ``ceil(steps / V)`` steps (the same images seen) at ``lr * V`` or ``lr * sqrt(V)``. The worker count
    does not enter: a run keeps its schedule when it resizes.
    """
    w, o = virtual_shards.count(cfg), cfg.optim
    if o.lr_scaling == "none":
        return cfg.train.steps, o.lr
    return math.ceil(cfg.train.steps / w), o.lr * (w if o.lr_scaling == "linear" else math.sqrt(w))


def lr_at(step: int, peak: float, warmup_steps: int) -> float:
    """The main lr at ``step`` (from 0): linear warm-up to ``peak`` over ``warmup_steps``, then ``peak``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak


def cuda_math(deterministic: bool = False) -> None:
    """A rank's CUDA settings: cuDNN picks its fastest kernels once (the input shapes are fixed; not
    when ``deterministic``: train.deterministic) and convolutions outside autocast run in TF32. Matrix
    products stay IEEE float32: the witnesses compute their scores in float32 on purpose, also under
    bf16 autocast (the estimators take e^f of them), and TF32 would round every input of those products
    to a 10-bit mantissa."""
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read at cuBLAS's first use
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False


def grads_in_buckets(model: nn.Module) -> bool:
    """Whether ``model`` (possibly compiled) is DDP with gradients that are views into its buckets."""
    return bool(getattr(getattr(model, "_orig_mod", model), "gradient_as_bucket_view", False))


def compile_model(model: nn.Module, device: torch.device, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` of the (DDP-wrapped) task; forward and backward become compiled graphs.

    On CUDA, mode "reduce-overhead" replays each graph's kernels as one CUDA graph: a jigsaw step of
    10 images launches thousands of small kernels, so on a GPU it is bound by launches, not FLOPs.
    ``backend="aot_eager"`` captures the same graphs without generating code (minutes faster: tests).
    """
    if backend != "inductor":
        return torch.compile(model, backend=backend, dynamic=False)
    # dynamic=False: a run's shapes are fixed; a graph with symbolic sizes would be slower
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)


def resume(ckpt_dir, task: nn.Module, main_opt, eta_opt, shards: range, n_shards: int, probe=None):
    """Load a checkpoint into ``task``, the optimisers (and ``probe``, the online probe); take the RNG
    states and stream position of this rank's virtual shards ``shards`` (of ``n_shards``).

    Returns ``(step, data position, RNG states of shards, permutations or None, checkpoint file)``. The
    file is read to the CPU: RNG states and permutations must stay there (``torch.set_rng_state`` and
    NumPy take CPU tensors), and ``load_state_dict`` moves weights and Adam's moments to the parameters'
    device. A checkpoint holds one RNG state and position per virtual shard, so any worker count that
    divides ``n_shards`` continues it.
    """
    try:
        payload = load_checkpoint(ckpt_dir, map_location="cpu")
    except (OSError, ValueError) as exc:  # every rank reads the same file: no rank is left waiting
        raise fatal.FatalError(str(exc), every_rank=True) from None
    written = len(payload["data_position"])
    if written != n_shards or len(payload["rng"]) != n_shards:
        raise fatal.FatalError(f"checkpoint {payload['path']} holds {written} virtual shards; resume with "
                               f"data.virtual_shards={written}", every_rank=True)
    positions = [payload["data_position"][v] for v in shards]
    if any(p != positions[0] for p in positions):  # the shards move in lockstep, one batch each a step
        raise fatal.FatalError(f"checkpoint {payload['path']}: virtual shards {list(shards)} are at different "
                               f"stream positions {positions}", every_rank=True)
    load_task_state(task, payload["encoder"], payload["task"])
    main_opt.load_state_dict(payload["optimizer"]["main"])
    if eta_opt is not None:
        eta_opt.load_state_dict(payload["optimizer"]["eta"])
    if probe is not None:
        probe.load_state_dict(payload.get("online_probe"))
    rng = [payload["rng"][v] for v in shards]
    return payload["step"], positions[0], rng, payload["permutations"], payload["path"]


def wrap_ddp(task: nn.Module, device: torch.device, bf16_grad_allreduce: bool = False,
             deterministic: bool = False) -> nn.Module:
    """The whole task in DDP (η included) when there is more than one rank; else the task.

    Gradients are views into DDP's buckets (no copy in and out of them, less memory);
    ``bf16_grad_allreduce`` all-reduces them in bfloat16 (for slow links between nodes). Otherwise, on the
    CPU and on GPUs when ``deterministic`` (train.deterministic), the gradients' mean is summed in rank
    order (:func:`dist.rank_ordered_mean_hook`), so that a resumed run at three or more workers rounds
    as the uninterrupted one does.
    """
    if not dist.is_distributed():
        return task
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # buffers: the loop makes them the mean over the virtual shards (virtual_shards.StepBuffers), the same
    # on every rank; DDP's broadcast of rank 0's would be one more collective a micro-batch
    model = DistributedDataParallel(task, device_ids=ids, gradient_as_bucket_view=True, broadcast_buffers=False)
    if bf16_grad_allreduce:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif device.type == "cpu" or deterministic:
        model.register_comm_hook(None, dist.rank_ordered_mean_hook)
    return model


def train_step(model: nn.Module, task: nn.Module, batches: dict | list[dict], step: int,
               main_opt: torch.optim.Optimizer, eta_opt: torch.optim.Optimizer | None,
               *, bf16: bool = False, rng: list[dict] | None = None,
               buffers: virtual_shards.StepBuffers | None = None, notice: bool = False,
               flags: StepFlags | None = None) -> dict:
    """One optimiser step over this rank's micro-batches; ``step`` counts from 0 (Algorithm 1's η
    schedule reads it).

    ``batches``: this rank's device batches after ``task.host_prepare``, one per virtual shard (a dict is
    one). Each micro-batch's loss, divided by their number k, is back-propagated into the accumulated
    gradients; DDP all-reduces them only after the last (``no_sync`` before), so W ranks × k micro-batches
    give the mean gradient over the V = W·k micro-batches. ``rng``: each micro-batch's RNG state, restored
    before it and updated after it (None: the process's RNG runs on). ``buffers``: the task's buffers
    restarted for each micro-batch and combined over every rank's after the last (None: left as the
    micro-batches leave them). Then the loss is all-reduced, together with ``notice`` (this rank has
    a preemption notice), into ``flags`` (:mod:`pretrain.step_flags`; None: flags of this step alone),
    on the device: nothing is read back. From the first step whose loss is non-finite on any rank, no
    rank's optimisers update (fused Adam skips on ``flags.found_inf``); the loop reads the flags at its
    next report. Returns ``{"metrics", "flags"}``, the metrics being this rank's means over its
    micro-batches, detached 0-d tensors still on the device.
    """
    micro = [batches] if isinstance(batches, dict) else list(batches)
    k = len(micro)
    device_type = next(task.parameters()).device.type
    # DDP's gradients are views into its all-reduce buckets: zeroed in place they stay so; set to None,
    # each backward allocates them anew and DDP copies every one into its bucket again
    set_to_none = not grads_in_buckets(model)
    main_opt.zero_grad(set_to_none=set_to_none)
    if eta_opt is not None:
        eta_opt.zero_grad(set_to_none=set_to_none)
    loss_sum, sums = None, {}
    for j, batch in enumerate(micro):
        if buffers is not None:
            buffers.begin(j)
        if rng is not None:
            restore_rng(rng[j])
        accumulate = j < k - 1 and hasattr(model, "no_sync")  # DDP: all-reduce after the last only
        with model.no_sync() if accumulate else contextlib.nullcontext():
            # masks_checked: host_prepare checked or built the batch's pair masks; entered here, outside a
            # compiled model, where setting it does not break the graph
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16), estimators.masks_checked():
                out = model(batch)
            (out["loss"] / k).backward()
        if rng is not None:
            rng[j] = capture_rng()
        if buffers is not None:
            buffers.keep()
        loss = out["loss"].detach()
        loss_sum = loss if loss_sum is None else loss_sum + loss
        for name, v in out.items():
            if name != "loss" and torch.is_tensor(v) and v.numel() == 1:
                sums[name] = v.detach() if name not in sums else sums[name] + v.detach()
    if buffers is not None:
        buffers.combine()
    if flags is None:
        flags = StepFlags(loss_sum.device, main_opt, eta_opt)
    flag = torch.full((), float(notice), device=loss_sum.device)
    flags.update(step, dist.all_reduce_mean_detached(torch.stack([loss_sum.float() / k, flag])))
    main_opt.step()
    bounds = getattr(task, "estimator", task)  # η-MINE lives in the estimator: no walk over the encoder a step
    if bounds is not None:
        estimators.eta_step(bounds, eta_opt, step)
    metrics = {name: v / k for name, v in sums.items()}
    metrics["loss"] = loss_sum / k
    return {"metrics": metrics, "flags": flags}


class MetricWindow:
    """Sums of per-step metrics over one report window on this rank, kept on ``device``.

    Adding a step's metrics reads nothing back from the device; :meth:`reduce` does, once a window.
    ``data_s``: seconds this rank waited for data in the window (the loop adds to it).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.keys: list[str] | None = None
        self.sums: torch.Tensor | None = None  # float64 [len(keys)] on device
        self.steps = 0
        self.samples = 0
        self.data_s = 0.0

    def add(self, metrics: dict[str, torch.Tensor], *, samples: int) -> None:
        """metrics: name -> 0-d tensor on the device (the same names every step)."""
        if self.keys is None:
            self.keys = sorted(metrics)
            self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
        self.sums += torch.stack([metrics[k].reshape(()).to(torch.float64) for k in self.keys])
        self.steps += 1
        self.samples += samples

    def reduce(self, world: int, wall_s: float) -> dict:
        """Window means all-reduced over ranks (one collective), plus throughput and data wait."""
        keys = self.keys or []
        sums = self.sums if self.sums is not None else torch.zeros(0, dtype=torch.float64, device=self.device)
        wait = torch.full((1,), self.data_s / max(wall_s, 1e-12), dtype=torch.float64, device=self.device)
        local = torch.cat([sums / max(self.steps, 1), wait])
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
    values = dist.all_gather_cat(local.clone()).tolist()
    if any(v != values[0] for v in values):
        raise RuntimeError(f"eta differs across ranks: {values}; the DDP replicas have diverged")
    # "eta" is the current value (the window mean the task reported would lag behind it)
    return {"eta": values[0], **{f"eta/rank{r}": v for r, v in enumerate(values)}}


def report_with_checkpoint(cfg, checkpoints: str | None, metrics, step, task, main_opt, eta_opt, position, rng,
                           permutations, probe=None) -> str:
    """Gather the RNG states of every virtual shard (``rng``: this rank's, in shard order); rank 0 writes
    the checkpoint with one RNG state and stream position (``position``: every shard's, in lockstep) per
    virtual shard; all report.

    ``checkpoints``: the local folder Ray Train keeps this run's checkpoints in (its experiment
    directory), or None for a bucket. When that folder is the one the controller made (Ray's storage
    marker is there: the same machine or a shared disk), rank 0 writes ``checkpoint_<step>`` in it
    itself (a half-written one left by an earlier attempt removed first), and Ray only records it
    (``NO_UPLOAD``: the bytes are written once, not written to a temporary folder and copied). For a
    bucket, or a node that does not see the controller's folder (no shared disk), Ray uploads it
    from a temporary folder, and its upload names a folder the node cannot reach. Returns the
    checkpoint directory's name.
    """
    import shutil

    import ray.train
    from ray.train import Checkpoint, CheckpointUploadMode
    from ray.train.v2._internal.constants import VALIDATE_STORAGE_MARKER_FILENAME

    rng = [state for states in gather_objects(rng) for state in states]  # rank order = shard order
    positions = [position] * len(rng)
    name = checkpoint_dir_name(step)
    if dist.rank() != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return name

    def save(directory):
        save_checkpoint(directory, step=step, config=to_plain(cfg), task=task, optimizer=main_opt,
                        eta_optimizer=eta_opt, rng=rng, data_position=positions, permutations=permutations,
                        online_probe=None if probe is None else probe.state_dict())

    if checkpoints is not None and os.path.isfile(os.path.join(checkpoints, VALIDATE_STORAGE_MARKER_FILENAME)):
        path = os.path.join(checkpoints, name)
        shutil.rmtree(path, ignore_errors=True)  # an attempt that failed before Ray recorded it
        save(path)  # complete once its checksum is written, last
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(path), checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
        return name
    with tempfile.TemporaryDirectory(prefix="pretrain-ckpt-") as tmp:
        save(tmp)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
    return name


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (a list of one without a process group)."""
    if not dist.is_distributed():
        return [obj]
    out = [None] * dist.world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def log_rank0(writer, logs: storage.LocalMirror, metrics: dict, step: int, batch: dict, cfg: DictConfig,
              upload_after_s: float = 0.0) -> None:
    """TensorBoard scalars (every metric) and ``metrics.jsonl`` in ``logs.dir``, then pushed to the run
    directory if the last upload is ``upload_after_s`` old (a no-op unless it is a URL); an input grid
    now and then."""
    for k, v in metrics.items():
        if k != "step":
            writer.add_scalar(k, v, step)
    first_report = step <= cfg.train.report_every
    if first_report or (cfg.train.image_every and step % cfg.train.image_every < cfg.train.report_every):
        writer.add_image("inputs", task_spec(cfg.task.kind).preview(batch), step)
    writer.flush()
    with open(os.path.join(logs.dir, METRICS_FILE), "a") as f:
        f.write(json.dumps({**metrics, WALL_TIME: time.time()}) + "\n")
    logs.push(upload_after_s)


def preemption_notice() -> bool:
    """Whether Ray Train has told this worker that a node of its group is being preempted (Ray drains a
    node on a spot reclaim's notice; its preemption watcher tells every worker). A host read, no
    collective. A SIGTERM to this worker process reaches the group through the report's stop
    all-reduce instead (:func:`pretrain.interrupt.stop_requested`)."""
    from ray.train.v2._internal.execution.context import get_train_context

    return get_train_context().preemption_context.preemption_info is not None


def maybe_crash(cfg: DictConfig, run_dir: Path | str, step: int, rank: int, world: int) -> None:
    """Fault injection for tests: the last rank exits hard, once per run, at ``train.crash_at_step``."""
    if cfg.train.crash_at_step is None or step != cfg.train.crash_at_step or rank != world - 1:
        return
    marker = storage.join(run_dir, CRASH_MARKER)
    if storage.exists(marker):
        return
    storage.write_text(marker, str(step))
    os._exit(1)


# ============================================================================ data


def open_loader(cfg: DictConfig, permutations, shard: int, n_shards: int, epoch: int, start_batch: int,
                pin_memory: bool = False):
    """Virtual shard ``shard``'s data_prep stream (of ``n_shards``) from epoch ``epoch`` after ``start_batch``
    batches, endless.

    The stream is the one rank ``shard`` of ``n_shards`` ranks reads, seeded by (seed, epoch, shard, batch
    index), so skipping is exact: a resumed run reads the same batches an uninterrupted one would have
    read next, whichever worker runs the shard.
    """
    d = cfg.data
    return task_spec(cfg.task.kind).open_stream(
        d, permutations, split=d.split, train=True, seed=cfg.run.seed, epoch=epoch,
        batches_per_epoch=d.batches_per_epoch, num_workers=d.loader_workers,
        rank=shard, world_size=n_shards, skip_batches=start_batch, pin_memory=pin_memory, endless=True)


def batch_stream(cfg: DictConfig, permutations, shards: range | list[int], n_shards: int, position: dict,
                 pin_memory: bool = False) -> Iterator:
    """Endless ``([one batch per shard of shards], position after them)`` over epochs, from ``position``.

    ``position = {"epoch": e, "batch": i}`` names the next batch of every shard (``i`` batches of epoch
    ``e`` are done; the shards move in lockstep). One loader for the whole run, whose worker processes
    serve every shard (:class:`data_prep.shard_stream.ZippedStreams`) and carry on from one epoch into
    the next.
    """
    streams = [open_loader(cfg, permutations, v, n_shards, position["epoch"], position["batch"]).stream
               for v in shards]
    loader = shard_stream.BatchLoader(shard_stream.ZippedStreams(streams), cfg.data.loader_workers, pin_memory)
    per_epoch = loader.stream.batches_per_epoch
    epoch, index = position["epoch"], position["batch"]
    for batches in loader:
        if index == per_epoch:
            epoch, index = epoch + 1, 0
        index += 1
        yield list(batches), {"epoch": epoch, "batch": index}


def worker_range(cfg: DictConfig) -> int | tuple[int, int]:
    """Ray Train's ``ScalingConfig.num_workers``: ``train.num_workers``, or ``(train.min_workers,
    train.num_workers)`` for an elastic run (:mod:`pretrain.elastic` keeps W a divisor of V)."""
    t = cfg.train
    return t.num_workers if t.min_workers is None else (t.min_workers, t.num_workers)


def worker_cpus(cfg: DictConfig) -> int:
    """CPUs a rank takes: its torch threads and its ``data.loader_workers`` loader processes."""
    return cfg.train.threads_per_worker + cfg.data.loader_workers


def pins_memory(cfg: DictConfig, device: torch.device) -> bool:
    """Whether the training loader pins its batches (:func:`data_prep.shard_stream.pins_memory`)."""
    return shard_stream.pins_memory(device, cfg.data.loader_workers)


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of ``batch`` on ``device`` (other values unchanged); JPEG bytes (``data.decode_on=device``)
    decoded and cropped there (:func:`data_prep.jigsaw_stream.with_decoded_crops`)."""
    from data_prep.jigsaw_stream import with_decoded_crops

    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return with_decoded_crops(moved, device)


def batch_size_of(batch: dict) -> int:
    """Samples in a batch: puzzles for jigsaw (``perm_index`` [P]) or images."""
    key = "perm_index" if "perm_index" in batch else "images"
    return int(batch[key].shape[0])
