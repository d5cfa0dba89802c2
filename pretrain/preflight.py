"""Checks that run on the driver before Ray starts, so a run that cannot work fails in one line.

What a worker would otherwise find 40-60 s later, after Ray retried it ``max_failures`` times:
options the task, encoder or bound does not take (the task is built once on the ``meta`` device:
no memory, no weights), a batch larger than the split, an output directory that cannot be written,
a worker count that does not divide the run's virtual shards (a resume included). Plus, once Ray is up,
whether the cluster has (or grows within ``train.resource_wait_s`` to have: the autoscaler is asked
for the workers' bundles) the CPUs and GPUs the workers ask for, and whether torch can use a GPU
there (driver, CUDA build, bf16); and how a local Ray is started: bound to the loopback address only.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

import storage
from pretrain.config import ConfigError

# With this set to 0 Ray takes 127.0.0.1 as the node address and binds its servers there. Ray reads
# it once, when it is imported, so it must be in the environment before `import ray`.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class ResumePoint:
    """Where a run continues: the newest checkpoint directory that verifies, and the newer ones skipped."""
    path: Path | str | None = None
    step: int = 0
    skipped: list[str] = field(default_factory=list)
    virtual_shards: int | None = None  # V of the run the checkpoint continues

    def describe(self) -> str:
        from storage import basename

        where = f"resuming from {basename(self.path)} (step {self.step})" if self.path else "no intact checkpoint: starting at step 0"
        return where + (f"; skipped {'; '.join(self.skipped)}" if self.skipped else "")


def check(cfg: DictConfig, run_dir: Path | None) -> None:
    """Every check that needs no Ray: raise :class:`ConfigError` with one line naming the key."""
    check_workers_divide_shards(cfg)
    check_task_builds(cfg)
    check_batch_fits_split(cfg)
    check_writable(cfg, run_dir)
    warn_sync_batchnorm(cfg)


def check_workers_divide_shards(cfg: DictConfig) -> None:
    """Every worker count the run may take (``train.num_workers``, and down to ``train.min_workers`` when
    elastic) must divide ``data.virtual_shards``: each worker runs V/W whole micro-batches a step."""
    from pretrain import virtual_shards

    v, w, low = cfg.data.virtual_shards, cfg.train.num_workers, cfg.train.min_workers
    if v is not None and v < 1:
        raise ConfigError(f"data.virtual_shards must be >= 1, got {v}")
    n = virtual_shards.count(cfg)
    if n % w:
        raise ConfigError(f"train.num_workers={w} does not divide data.virtual_shards={n} (each worker runs "
                          f"V/W micro-batches a step); choose one of {virtual_shards.divisors(n)}")
    if low is not None and not 1 <= low <= w:
        raise ConfigError(f"train.min_workers must be between 1 and train.num_workers={w}, got {low}")
    if cfg.task.estimator_kwargs.get("reduce") and (n != w or low is not None):
        # a reduced bound's means span the micro-batches the ranks run at the same time: W of them
        raise ConfigError(f"task.estimator_kwargs.reduce=true takes its means over the workers' concurrent "
                          f"micro-batches, so its result depends on the worker count: run it on a fixed "
                          f"train.num_workers equal to data.virtual_shards ({n}), or set reduce=false (the bound "
                          f"per virtual shard)")


def check_task_builds(cfg: DictConfig) -> None:
    """Build encoder, bound and task on the meta device: a misspelt or unknown option is named."""
    from pretrain.models import build_encoder_from_config
    from pretrain.tasks import build_task

    def fail(key: str, exc: Exception) -> ConfigError:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        m = re.search(r"unexpected keyword argument '(\w+)'", msg)
        if m:
            return ConfigError(f"{key}.{m.group(1)} is not an option here ({msg})")
        return ConfigError(f"{key}: {msg}")

    with torch.device("meta"):
        try:
            encoder = build_encoder_from_config(cfg.model)
        except (TypeError, ValueError) as exc:
            raise fail("model.kwargs", exc) from None
        if cfg.task.estimator is not None:
            from pretrain import estimators

            try:
                estimators.build(cfg.task.estimator, **dict(cfg.task.estimator_kwargs))
            except (TypeError, ValueError) as exc:
                raise fail("task.estimator_kwargs", exc) from None
        try:
            build_task(cfg.task.kind, encoder, estimator=cfg.task.estimator,
                       estimator_kwargs=dict(cfg.task.estimator_kwargs) or None,
                       num_permutations=cfg.data.num_permutations, **dict(cfg.task.kwargs))
        except (TypeError, ValueError) as exc:
            raise fail("task.kwargs", exc) from None


def warn_sync_batchnorm(cfg: DictConfig) -> None:
    """``train.sync_batchnorm``: warn what it costs. torch's SyncBatchNorm drops the statistics of ranks
    with empty batches through a boolean mask, a read back from the GPU in every BatchNorm layer's
    forward: the host waits for the device that many times a step, where the loop otherwise waits once."""
    if not cfg.train.sync_batchnorm:
        return
    import warnings

    from pretrain.models import build_encoder_from_config

    with torch.device("meta"):  # the encoder's layers: the heads' are few and small
        encoder = build_encoder_from_config(cfg.model)
    layers = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    warnings.warn(f"train.sync_batchnorm=true: {layers} BatchNorm layers, each a host sync a step on GPUs "
                  f"(the step otherwise has one); keep it off unless per-rank batches are too small for batch norm")


def check_batch_fits_split(cfg: DictConfig) -> None:
    """A batch needs that many distinct images of the split, and an epoch at least one batch per rank."""
    from data_prep import sharding
    from data_prep.manifest import read_manifest, shard_sample_counts
    from pretrain import virtual_shards
    from pretrain.tasks import spec

    n_shards = virtual_shards.count(cfg)
    d = cfg.data
    key = spec(cfg.task.kind).batch_key
    group = int(d[key])
    counts = shard_sample_counts(read_manifest(d.shards), d.split)
    if group > sum(counts):
        raise ConfigError(f"data.{key}={group} exceeds the {sum(counts)} images of split {d.split!r} in {d.shards}")
    if d.batches_per_epoch is None:
        try:
            sharding.default_batches_per_epoch(counts, group, n_shards, d.loader_workers, resampled=True)
        except ValueError:
            raise ConfigError(f"split {d.split!r} ({sum(counts)} images) cannot give each of {n_shards} virtual "
                              f"shards (data.virtual_shards, else train.num_workers) a batch of data.{key}={group}; "
                              f"lower them or set data.batches_per_epoch") from None


def check_writable(cfg: DictConfig, run_dir: Path | None) -> None:
    """The run directory (or run.root for a new run) and run.storage_path can be written (a URL: its bucket is
    there and reachable)."""
    from storage.writable import NotWritableError, check_writable_dir

    targets = [(run_dir, "run directory")] if run_dir is not None else [(cfg.run.root, "run.root")]
    if cfg.run.storage_path:
        targets.append((cfg.run.storage_path, "run.storage_path"))
    for path, what in targets:
        try:
            check_writable_dir(path, what, "choose another (run.root=DIR or run.storage_path=DIR)")
        except NotWritableError as exc:
            raise ConfigError(str(exc)) from None


def resume_point(cfg: DictConfig, experiment_dir) -> ResumePoint:
    """The newest checkpoint in ``experiment_dir`` (a local path or URL) that matches its checksum (Ray's
    own record of the run can lag the directory after a driver kill), with the run's virtual shards V (one
    stream position a shard); a ``data.virtual_shards`` set to another V is an error."""
    import io

    from pretrain.checkpoint import CHECKPOINT_FILE, newest_verified, step_of

    path, skipped = newest_verified(experiment_dir)
    if path is None:
        return ResumePoint(skipped=skipped)
    file = storage.join(path, CHECKPOINT_FILE)
    source = io.BytesIO(storage.read_bytes(file)) if storage.is_url(file) else file
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True, mmap=not storage.is_url(file))
        payload["rng"]
        shards = len(payload["data_position"])
    except Exception as exc:  # a foreign pickle, a payload of another layout: its checksum matched
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, KeyError):
            first = f"no {first} key"
        raise ConfigError(f"{file} matches its checksum but is not a loadable pretraining checkpoint ({first}); "
                          f"move its directory aside to resume from an earlier one") from None
    if cfg.data.virtual_shards is not None and cfg.data.virtual_shards != shards:
        raise ConfigError(f"{path} holds {shards} virtual shard(s): resume with data.virtual_shards={shards} (the "
                          f"data order, RNG streams and global batch are per shard), not {cfg.data.virtual_shards}")
    return ResumePoint(path, step_of(path), skipped, shards)


def local_ray_on_loopback() -> None:
    """Make a local Ray started from this process listen on 127.0.0.1 only (call before ``import ray``).

    An explicit ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` in the environment is left alone. Opening a
    Ray to a network is deliberate: start it with ``ray start --head --node-ip-address=IP`` (with
    Ray's token authentication, on by default) and pass ``--address``.
    """
    import sys

    if "ray" not in sys.modules:  # once imported, Ray has read it; its processes must agree with it
        os.environ.setdefault(LOOPBACK_ENV, "0")


def joins_cluster(address: str | None) -> bool:
    """Whether this driver joins an existing Ray: ``--address`` given, or ``RAY_ADDRESS`` set (as Ray
    sets it for a job's entrypoint, so a submitted run uses the cluster it was submitted to)."""
    return address is not None or bool(os.environ.get("RAY_ADDRESS"))


def ray_init_args(address: str | None, extra: dict | None) -> tuple[str | None, dict]:
    """``(address, kwargs)`` for ``ray.init``: the cluster to join (:func:`joins_cluster`; None lets
    Ray read ``RAY_ADDRESS``), else a new local Ray (never one found on the machine), its dashboard
    (if asked for) on 127.0.0.1."""
    kwargs = dict(extra or {})
    if joins_cluster(address):
        return address, kwargs
    local_ray_on_loopback()
    if kwargs.get("include_dashboard"):
        kwargs.setdefault("dashboard_host", "127.0.0.1")
    return "local", kwargs


def init_ray(address: str | None = None, extra: dict | None = None) -> None:
    """``ray.init`` as ``python -m pretrain`` does it, unless Ray is already running: join ``address``
    (:func:`ray_init_args`), or start a local Ray with Ray's defaults and warn if it is not on loopback."""
    import ray

    if ray.is_initialized():
        return
    init_address, kwargs = ray_init_args(address, extra)
    ray.init(address=init_address, **kwargs)
    if not joins_cluster(address):
        warn_if_not_loopback()


def warn_if_not_loopback() -> None:
    """After a local ``ray.init``: say so when Ray took a network address (it was imported before
    :func:`local_ray_on_loopback` could take effect)."""
    import warnings

    import ray

    ip = ray.util.get_node_ip_address()
    if ip not in LOOPBACK:
        warnings.warn(f"this local Ray listens on {ip}, not only on 127.0.0.1: set {LOOPBACK_ENV}=0 before "
                      f"importing ray (python -m pretrain does) to keep it off the network")


def wait_for_workers(num_workers: int, cpus: int, use_gpu: bool | None, wait_s: float, poll_s: float = 1.0,
                     gpus: float = 1.0) -> bool:
    """Wait until the cluster holds ``num_workers`` workers of ``cpus`` CPUs (and ``gpus`` GPUs each when
    they use GPUs: train.gpus_per_worker); return whether they do. ``use_gpu=None`` is decided once the CPU bundles exist, from the
    nodes that hold them (an autoscaling cluster starts none until asked: an empty cluster says
    nothing about its GPUs), and then the GPU bundles are waited for as well."""
    import ray

    if use_gpu is None:
        wait_for_resources(num_workers, {"CPU": cpus}, wait_s, poll_s)
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if use_gpu:
        wait_for_resources(num_workers, {"CPU": cpus, "GPU": gpus}, wait_s, poll_s)
    return use_gpu


def local_cpus(ray_init_kwargs: dict | None = None) -> int:
    """The CPUs a local Ray started here would have: ``num_cpus`` if given, else what Ray detects
    (the machine's cores, or its cgroup's share)."""
    if (ray_init_kwargs or {}).get("num_cpus") is not None:
        return int(ray_init_kwargs["num_cpus"])
    from ray._private.utils import get_num_cpus

    return int(get_num_cpus())


def fit_to_local_cpus(cfg: DictConfig, cpus: int) -> str | None:
    """A local Ray cannot grow: fit ``data.loader_workers`` to ``cpus`` (``cfg`` changed in place)
    and return a line saying so, or None when the run fits as it is. Raises :class:`ConfigError`
    when even no loader processes fit (the ranks' torch threads alone need more CPUs)."""
    t, w, loaders = cfg.train, cfg.train.num_workers, cfg.data.loader_workers
    if w * (t.threads_per_worker + loaders) <= cpus:
        return None
    if w * t.threads_per_worker > cpus:
        raise ConfigError(f"train.num_workers={w} x train.threads_per_worker={t.threads_per_worker} need "
                          f"{w * t.threads_per_worker} CPUs and this machine has {cpus} (a local Ray cannot "
                          f"grow): lower train.num_workers, or join a larger cluster with --address")
    fitted = cpus // w - t.threads_per_worker
    cfg.data.loader_workers = fitted
    return (f"this machine has {cpus} CPUs: data.loader_workers={loaders} lowered to {fitted} so that "
            f"{w} rank(s) of train.threads_per_worker + data.loader_workers CPUs fit")


def wait_for_resources(num_workers: int, per_worker: dict, wait_s: float, poll_s: float = 1.0) -> None:
    """Return once the cluster holds ``num_workers × per_worker`` (e.g. ``{"CPU": 1, "GPU": 1}``); an
    autoscaling cluster is asked for those bundles (:func:`request_bundles`: nodes start at once) and
    gets ``wait_s`` seconds to grow. Raises :class:`ConfigError` saying what is missing."""
    import ray

    need = {k: v * num_workers for k, v in per_worker.items()}

    def enough(have: dict) -> bool:
        return all(have.get(k, 0) >= v for k, v in need.items())

    have = ray.cluster_resources()
    if enough(have):  # a cluster that holds them already is asked for nothing
        return
    deadline = time.monotonic() + wait_s
    # a person waits: say for what
    print(f"waiting up to {wait_s:g} s (train.resource_wait_s) for the cluster to hold "
          f"{', '.join(f'{v:g} {k}' for k, v in need.items())}", flush=True)
    with request_bundles([dict(per_worker)] * num_workers, expire_after_s=wait_s + 30):
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            have = ray.cluster_resources()
            if enough(have):
                return
    parts = ", ".join(f"{v:g} {k} (cluster has {have.get(k, 0):g})" for k, v in need.items() if have.get(k, 0) < v)
    raise ConfigError(f"train.num_workers={num_workers} need {parts}, still missing after "
                      f"train.resource_wait_s={wait_s:g} (a rank takes train.threads_per_worker + "
                      f"data.loader_workers CPUs); lower one of them, or add nodes")


@contextlib.contextmanager
def request_bundles(bundles: list[dict], expire_after_s: float):
    """Ask the autoscaler for ``bundles`` while inside (nothing else asks before the trainer starts: an
    autoscaling cluster whose worker types have ``min_workers: 0`` would stay empty).

    Through Ray's autoscaling coordinator, the actor that Ray Train and Ray Data send their requests
    to: it merges every requester's bundles into one ``ray.autoscaler.sdk.request_resources`` call and
    re-sends the merge every 20 s, so a request made around it would be overwritten. Cancelled on the
    way out: the workers' placement group holds the nodes from then on.
    """
    import uuid

    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        ResourceRequestPriority, get_or_create_autoscaling_coordinator)

    coordinator = get_or_create_autoscaling_coordinator()
    requester = f"pretrain-preflight-{uuid.uuid4().hex[:8]}"
    ray.get(coordinator.request_resources.remote(requester_id=requester, resources=bundles,
                                                 expire_after_s=expire_after_s,
                                                 priority=ResourceRequestPriority.HIGH))
    try:
        yield
    finally:
        ray.get(coordinator.cancel_request.remote(requester_id=requester))


def check_gpu_workers(bf16: bool, wait_s: float) -> None:
    """Before the workers start: a Ray task given one GPU reports what torch sees there
    (:func:`pretrain.gpu.facts`). A GPU torch cannot use (a CUDA build the driver is too old for) fails
    here in one line, not in the workers' NCCL set-up; so does ``train.bf16`` on a GPU without bf16."""
    import ray

    from pretrain import gpu

    probe = ray.remote(num_gpus=1, num_cpus=0)(gpu.facts).remote()
    try:
        facts = ray.get(probe, timeout=max(wait_s, 30.0))
    except ray.exceptions.GetTimeoutError:
        ray.cancel(probe)
        raise ConfigError(f"no GPU free for the GPU check within {max(wait_s, 30.0):g} s (another job holds them?); "
                          f"free them, or set train.use_gpu=false") from None
    found = gpu.problems(facts, gpus=1, bf16=bf16)
    if found:
        raise ConfigError(found[0])
