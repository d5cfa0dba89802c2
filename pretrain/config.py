"""The pretraining config: typed dataclasses are the one home of defaults.

YAML files in ``configs/`` override the defaults, ``key=value`` command-line arguments override
the YAML (OmegaConf structured configs: an unknown key or a value of the wrong type is an error
naming the key). :func:`load_config` returns the merged config; :func:`validate` checks what the
types cannot (known task kinds and estimators, existing shards, step counts) so that every config
error is reported in one line before Ray starts.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key and what to do."""


@dataclass
class RunSection:
    name: str = "pretrain"  # run directory is <root>/<name>-<YYYYmmdd-HHMMSS>
    root: str = "runs"
    # Ray Train storage for checkpoints (e.g. a shared file system on a cluster). None: the run
    # directory itself, so checkpoints sit beside config.yaml and tb/.
    storage_path: Optional[str] = None
    seed: int = 0  # seeds the models, the η/critic initialisation and the data order


def run_home(run) -> str:
    """Where a config's run directories go: a URL ``run.storage_path`` (with checkpoints in a bucket
    there is no shared disk for the rest of the run either, so it holds the whole run), else ``run.root``."""
    import storage

    return run.storage_path if run.storage_path and storage.is_url(run.storage_path) else run.root


@dataclass
class DataSection:
    shards: str = MISSING  # a data_prep output directory (manifest.json + <split>-*.tar)
    split: str = "train"
    # jigsaw: a batch is images_per_batch images x perms_per_image permutations (paper: 10 x 16)
    images_per_batch: int = 10
    perms_per_image: int = 16
    num_permutations: int = 100  # size of the maximal-Hamming permutation set
    # None: the committed set (data_prep/permutations/max_hamming_100.txt), the same for every
    # run.seed as in the paper; a path (.npy or text, 9 integers a line) takes another, e.g. a
    # published one. Its first num_permutations rows are used; checkpoints record their sha256.
    permutations: Optional[str] = None
    # infomax: batch_size images of size x size pixels per rank (STL10 is scaled to 32)
    batch_size: int = 64
    size: int = 32
    # None: one pass over this rank's share of the split is one epoch
    batches_per_epoch: Optional[int] = None
    loader_workers: int = 0  # DataLoader worker processes per rank (0: decode in the train process)
    # jigsaw: run the encoder once per image tile and gather the features into the puzzles (the
    # stream's gather=False). Same loss and gradients as encoding every scrambled patch, for
    # 1/perms_per_image of the encoder work and data movement (16x less with the paper's batches).
    unique_tiles: bool = True
    # jigsaw: where gray, per-patch standardisation and scrambling run. host: the loader workers.
    # device: workers only decode and crop, and ship uint8 tiles (4x fewer bytes); the rest runs
    # batched on the training device (needs unique_tiles). Same batches either way.
    augment_on: str = "host"


@dataclass
class ModelSection:
    # timm model name (e.g. resnet50: 2048 features per patch) or "dcgan" (paper's InfoMax encoder)
    encoder: str = "resnet50"
    depth: Optional[int] = None  # dcgan: number of conv layers kept (the InfoMax result used 2)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed on to build_encoder


@dataclass
class TaskSection:
    kind: str = "jigsaw-ce"  # a kind of pretrain.tasks.kinds(): jigsaw-ce | jigsaw-mi | infomax | supervised
    # MI bound for jigsaw-mi and infomax (eta-mine, dv-mine, ...); None for jigsaw-ce
    estimator: Optional[str] = None
    estimator_kwargs: Dict[str, Any] = field(default_factory=dict)  # e.g. {n_critic: 1}
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed on to build_task


@dataclass
class OptimSection:
    # Paper, Appendix D: Adam (0.9, 0.999), 1e-4 for encoder and heads, 1e-2 for η, no decay.
    lr: float = 1e-4
    eta_lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    # Many workers: none keeps train.steps and lr as given (then keep the paper's global batch by
    # splitting data.images_per_batch over the workers). linear|sqrt read the config as one worker's
    # run: each of W workers takes the full per-worker batch, the steps are divided by W (the same
    # images seen) and lr is multiplied by W or sqrt(W) (η's lr is left as it is).
    lr_scaling: str = "none"
    warmup_steps: int = 0  # linear warm-up of the main lr over the first N steps (0: none)


@dataclass
class TrainSection:
    # Ray Train workers (DDP ranks); each reserves gpus_per_worker GPUs (when used) and
    # threads_per_worker + data.loader_workers CPUs (the processes it really runs)
    num_workers: int = 1
    use_gpu: Optional[bool] = None  # None: use GPUs when the cluster has them
    # GPUs a rank reserves: 1, a whole number, or a fraction (0.5: two ranks share a GPU; their
    # process group is then gloo, as NCCL refuses two ranks on one device; for tests, not for speed)
    gpus_per_worker: float = 1.0
    bf16: bool = False  # autocast the forward pass to bfloat16 (fast on GPUs and AVX-512 CPUs)
    channels_last: bool = False  # NHWC memory format for conv encoders (faster on CPU and GPU)
    # GPU only: batch-norm statistics over the global batch (CPU process groups cannot sync BN)
    sync_batchnorm: bool = False
    steps: int = 1000  # optimiser steps in total (a resumed run continues to this number)
    # Every report_every steps the metrics are all-reduced and rank 0 writes TensorBoard and
    # metrics.jsonl (cheap: one collective). Only checkpoints travel through ray.train.report.
    report_every: int = 10
    checkpoint_every: int = 100  # a multiple of report_every
    # Ray Train's controller polls the workers this often (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, set by
    # the launcher for the run): a ray.train.report waits until the controller has taken the one
    # before (Ray's default 2 s made a report every step cost ~1.8 s); the end of a run waits two
    # polls (the last report, then "finished"); a failed worker is noticed at the next poll.
    # 0.1 s cost no measurable step time here (benchmarks/results/train_step_exploration.md); a poll
    # is one actor call per worker, so on clusters of hundreds of workers 0.5 s keeps the load lower.
    controller_poll_s: float = 0.1
    # A run directory in a bucket: rank 0 uploads metrics.jsonl and the TensorBoard events at most
    # this often, and at every checkpoint and the end (an object cannot be appended to: each upload
    # sends the whole grown file). The driver's progress lines and TensorBoard lag by up to this much.
    upload_every_s: float = 10.0
    # Multi-node DDP: all-reduce gradients in bfloat16 (half the bytes on the network; DDP's
    # bf16_compress_hook, NCCL only). Off: gradients travel in float32.
    bf16_grad_allreduce: bool = False
    keep_checkpoints: Optional[int] = None  # None: keep all
    image_every: int = 0  # TensorBoard grid of scrambled puzzles every N steps (0: first report only)
    max_failures: int = 2  # worker failures Ray Train recovers from (restarting from the last checkpoint)
    threads_per_worker: int = 1  # torch threads per worker (one CPU each)
    # Seconds to wait for the cluster to hold the workers' CPUs/GPUs (an autoscaler adding nodes)
    # before failing with what is missing, instead of waiting forever.
    resource_wait_s: float = 60.0
    # GPU: deterministic kernels (torch.use_deterministic_algorithms, cuDNN without autotuning, cuBLAS's
    # fixed workspace), so that a killed and resumed run ends bit for bit where an uninterrupted one
    # does. Slower than cuDNN's autotuned kernels; ops without a deterministic kernel warn.
    deterministic: bool = False
    # torch.compile the task (forward and backward); on CUDA with CUDA graphs ("reduce-overhead":
    # a small batch's step is bound by kernel launches). Compiling costs minutes at start-up.
    compile: bool = False
    # Testing fault tolerance: rank world_size-1 exits hard once when it reaches this step.
    crash_at_step: Optional[int] = None


@dataclass
class TrackSection:
    # MLflow tracking URI (file:./mlruns, sqlite:///mlflow.db, http://host:5000); None: TensorBoard
    # only. Needs pip install -e .[mlflow]; the driver logs params, metrics and the exported encoder.
    mlflow_uri: Optional[str] = None
    mlflow_experiment: str = "pretrain"


@dataclass
class PretrainConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    task: TaskSection = field(default_factory=TaskSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    track: TrackSection = field(default_factory=TrackSection)


def _one_line(exc: OmegaConfBaseException, source: str) -> ConfigError:
    """Turn an OmegaConf error (multi-line, with object types) into one line naming the key."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = getattr(exc, "full_key", None)
    if key and key not in msg:
        msg = f"{key}: {msg}"
    return ConfigError(f"{source}: {msg}")


def merge_config(schema: type, path: str | os.PathLike | None = None,
                 overrides: list[str] | None = None) -> DictConfig:
    """The defaults of the dataclass ``schema`` <- YAML at ``path`` <- ``key=value`` overrides.

    The one way every entry point (``pretrain``, ``eval.linear``, ``cluster``) reads its config.
    Raises :class:`ConfigError` (one line) for an unknown key, a wrong type, a malformed
    override, or a missing/unreadable YAML file. Paths are left as given; ``path`` may be a URL
    (a run's saved config).
    """
    import storage

    cfg = OmegaConf.structured(schema)
    if path is not None:
        path = storage.as_path(path)
        try:
            found = storage.isfile(path)
        except storage.StorageError as exc:
            raise ConfigError(str(exc)) from None
        if not found:
            raise ConfigError(f"config file {path} not found (shipped configs are in configs/)")
        try:
            file_cfg = OmegaConf.create(storage.read_text(path))
        except Exception as exc:  # YAML syntax error
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{path}: cannot parse YAML: {first}") from None
        if not isinstance(file_cfg, DictConfig):
            keys = ", ".join(f"{f.name}:" for f in dataclasses.fields(schema))
            raise ConfigError(f"{path}: the top level is a {type(file_cfg).__name__}, not a mapping of "
                              f"settings ({keys})")
        try:
            cfg = OmegaConf.merge(cfg, file_cfg)
        except OmegaConfBaseException as exc:
            raise _one_line(exc, str(path)) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.steps=100)")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides or [])))
    except OmegaConfBaseException as exc:
        raise _one_line(exc, "command line") from None
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> DictConfig:
    """The pretraining config: :func:`merge_config` of :class:`PretrainConfig`, local paths made absolute."""
    return absolute_paths(merge_config(PretrainConfig, path, overrides))


def defaults_help(schema: type, prefix: str = "") -> str:
    """One line per key of the dataclass ``schema``: ``key=default``, then the field's
    ``metadata["help"]`` if it has one. For ``--help``: the defaults shown are the ones that apply."""
    lines = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(default):
            lines.append(defaults_help(type(default), prefix=f"{key}."))
            continue
        if isinstance(default, str) and default == MISSING:
            shown = "(required)"
        elif default is None or isinstance(default, bool):
            shown = str(default).lower().replace("none", "null")
        else:
            shown = str(default)
        text = f"  {key}={shown}"
        if f.metadata.get("help"):
            text = f"{text:<34} {f.metadata['help']}"
        lines.append(text)
    return "\n".join(lines)


def absolute_paths(cfg: DictConfig) -> DictConfig:
    """Make the local paths (``data.shards``, ``data.permutations``, ``run.root``, ``run.storage_path``) absolute.

    Ray Train runs the workers in another working directory, so a relative path given on the
    command line must be resolved where it was given. ``s3://``/``gs://`` URLs are kept as they are;
    any other ``scheme://`` is a :class:`ConfigError` (never a local folder named ``scheme:``).
    """
    import storage

    for section, key in (("data", "shards"), ("data", "permutations"), ("run", "root"), ("run", "storage_path")):
        node = cfg[section]
        if OmegaConf.is_missing(node, key) or node[key] is None:
            continue
        try:
            node[key] = storage.resolve(node[key])
        except storage.StorageError as exc:
            raise ConfigError(f"{section}.{key}: {exc}") from None
    return cfg


def to_plain(cfg: DictConfig) -> dict:
    """The config as plain dicts (for checkpoints and Ray)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def from_plain(d: dict) -> DictConfig:
    """Rebuild the typed config from :func:`to_plain` output (e.g. a checkpoint's ``config``)."""
    return OmegaConf.merge(OmegaConf.structured(PretrainConfig), d)


def validate(cfg: DictConfig, check_shards: bool = True) -> None:
    """Check what types cannot; raise :class:`ConfigError` with one line naming the key.

    Reads the shard manifest (cheap) so that missing shards fail here, not in a worker;
    ``check_shards=False`` skips that (a cost plan needs no data).
    """
    if OmegaConf.is_missing(cfg.data, "shards"):
        raise ConfigError("data.shards is required: a data_prep output directory (data.shards=DIR)")
    t = cfg.train
    if cfg.optim.lr_scaling not in ("none", "linear", "sqrt"):
        raise ConfigError(f"optim.lr_scaling must be none, linear or sqrt, got {cfg.optim.lr_scaling!r}")
    if cfg.optim.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps must be >= 0, got {cfg.optim.warmup_steps}")
    if t.controller_poll_s <= 0:
        raise ConfigError(f"train.controller_poll_s must be > 0, got {t.controller_poll_s}")
    if t.upload_every_s < 0:
        raise ConfigError(f"train.upload_every_s must be >= 0, got {t.upload_every_s}")
    if t.bf16_grad_allreduce and t.use_gpu is False:
        raise ConfigError("train.bf16_grad_allreduce needs GPUs (NCCL); gloo cannot all-reduce bfloat16 hooks")
    for key in ("steps", "report_every", "checkpoint_every", "num_workers", "threads_per_worker"):
        if t[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {t[key]}")
    if t.checkpoint_every % t.report_every:
        raise ConfigError(
            f"train.checkpoint_every ({t.checkpoint_every}) must be a multiple of "
            f"train.report_every ({t.report_every}): a checkpoint carries the metrics of its report")
    if not (0 < t.gpus_per_worker <= 1 or t.gpus_per_worker == int(t.gpus_per_worker) > 1):
        raise ConfigError(f"train.gpus_per_worker must be a fraction in (0, 1] or a whole number, got {t.gpus_per_worker}")
    if t.max_failures < 0:
        raise ConfigError(f"train.max_failures must be >= 0, got {t.max_failures}")
    from pretrain import tasks

    if cfg.task.kind not in tasks.kinds():
        raise ConfigError(f"task.kind {cfg.task.kind!r} unknown; choose one of {', '.join(tasks.kinds())}")
    spec = tasks.spec(cfg.task.kind)
    if not spec.needs_estimator:
        if cfg.task.estimator is not None:
            raise ConfigError(f"task.estimator must be null for task.kind={cfg.task.kind} (it has no MI bound)")
    else:
        from pretrain import estimators

        if cfg.task.estimator is None:
            raise ConfigError(f"task.estimator is required for task.kind={cfg.task.kind}; "
                              f"choose one of {', '.join(estimators.names())}")
        if cfg.task.estimator not in estimators.names():
            raise ConfigError(f"task.estimator {cfg.task.estimator!r} unknown; "
                              f"choose one of {', '.join(estimators.names())}")
    if cfg.model.encoder != "dcgan":
        import timm

        if not timm.is_model(cfg.model.encoder):
            raise ConfigError(f"model.encoder {cfg.model.encoder!r} is neither 'dcgan' nor a timm model "
                              f"(see timm.list_models())")
    d = cfg.data
    for key in ("images_per_batch", "perms_per_image", "num_permutations", "batch_size", "size"):
        if d[key] < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {d[key]}")
    if d.augment_on not in ("host", "device"):
        raise ConfigError(f"data.augment_on must be host or device, got {d.augment_on!r}")
    if d.augment_on == "device" and not (spec.uses_permutations and d.unique_tiles):
        raise ConfigError("data.augment_on=device is for jigsaw tasks with data.unique_tiles=true")
    if spec.uses_permutations and d.perms_per_image > d.num_permutations:
        raise ConfigError(f"data.perms_per_image ({d.perms_per_image}) exceeds data.num_permutations "
                          f"({d.num_permutations})")
    if spec.uses_permutations:
        from data_prep.jigsaw import permutation_set

        try:
            permutation_set(d.permutations, d.num_permutations)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"data.permutations: {exc}") from None
    if t.sync_batchnorm and t.use_gpu is False:
        raise ConfigError("train.sync_batchnorm needs GPUs (CPU process groups cannot sync batch norm)")
    if cfg.track.mlflow_uri:
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("track.mlflow_uri is set but mlflow is not installed: pip install -e .[mlflow]")
    if not check_shards:
        return
    import storage
    from data_prep.manifest import ManifestError, read_manifest, shard_paths

    try:
        manifest = read_manifest(d.shards)
        shard_paths(d.shards, d.split)
    except (ManifestError, storage.StorageError) as exc:
        raise ConfigError(f"data.shards: {exc}") from None
    for key in ("root", "storage_path"):  # a bucket that is missing or unreadable fails here, not in a worker
        if storage.is_url(cfg.run[key] or ""):
            try:
                storage.check_bucket(cfg.run[key])
            except storage.StorageError as exc:
                raise ConfigError(f"run.{key}: {exc}") from None
    if spec.needs_labels:
        if not manifest["splits"][d.split].get("labelled", True):
            raise ConfigError(f"data.split {d.split!r} of {d.shards} has no labels; task.kind={cfg.task.kind} "
                              f"trains on labels (choose a labelled split, e.g. data.split=train)")
        n_classes, given = len(manifest["class_names"]), cfg.task.kwargs.get("num_classes")
        if given != n_classes:
            raise ConfigError(f"task.kwargs.num_classes is {given}, but {d.shards} has {n_classes} classes; "
                              f"set task.kwargs.num_classes={n_classes}")
