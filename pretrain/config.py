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


def setting(default: Any, help: str) -> Any:
    """A config field: its default and the line ``--help`` prints for it (``metadata["help"]``). A dict
    default is copied for every config."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RunSection:
    name: str = setting("pretrain", "the run directory is <root>/<name>-<YYYYmmdd-HHMMSS>; cluster jobs resume "
                                    "the latest run of a name")
    root: str = setting("runs", "folder or s3:// / gs:// URL holding the run directories")
    storage_path: Optional[str] = setting(
        None, "Ray Train storage for checkpoints (e.g. a shared file system on a cluster; a URL holds the whole "
              "run); null: the run directory itself, beside config.yaml and tb/")
    seed: int = setting(0, "seeds the models, the η/critic initialisation and the data order")


@dataclass
class DataSection:
    shards: str = setting(MISSING, "a data_prep output directory (manifest.json + <split>-*.tar) or its URL")
    split: str = setting("train", "the split to pretrain on")
    images_per_batch: int = setting(10, "jigsaw: images a batch (a batch is images_per_batch x perms_per_image "
                                        "puzzles; paper: 10 x 16)")
    perms_per_image: int = setting(16, "jigsaw: permutations drawn for each image")
    num_permutations: int = setting(100, "jigsaw: size of the maximal-Hamming permutation set (the committed one has "
                                              "data_prep.jigsaw.NUM_PERMUTATIONS = 100)")
    permutations: Optional[str] = setting(
        None, "jigsaw: null for the committed set (data_prep/permutations/max_hamming_100.txt, the same for every "
              "run.seed as in the paper), or a .npy / text file of 9 integers a line; its first num_permutations "
              "rows are used and checkpoints record their sha256")
    batch_size: int = setting(64, "infomax and supervised: images a batch per rank")
    size: int = setting(32, "infomax and supervised: image side in pixels (STL-10 is scaled to 32)")
    batches_per_epoch: Optional[int] = setting(None, "null: one pass over this rank's share of the split is one epoch")
    loader_workers: int = setting(0, "DataLoader worker processes per rank (0: decode in the training process)")
    virtual_shards: Optional[int] = field(default=None, metadata={"help": (
        "V: the global batch is V micro-batches (one per virtual shard, each its own batch for the "
        "bound and batch norm); each of W workers runs V/W of them a step. Fixes the result whatever W "
        "computes it; a run keeps its V when resumed. null: train.num_workers")})
    unique_tiles: bool = setting(
        True, "jigsaw: encode each image tile once and gather the features into the puzzles: the same loss and "
              "gradients for 1/perms_per_image of the encoder work")
    augment_on: str = setting(
        "host", "jigsaw: where gray, per-patch standardisation and scrambling run: host (the loader workers) or "
                "device (workers ship uint8 tiles, 4x fewer bytes; needs unique_tiles); the same batches either way")
    decode_on: str = field(default="host", metadata={"help": (
        "jigsaw with augment_on=device: host decodes JPEGs in the loader workers; device ships the JPEG bytes "
        "and decodes and crops them in batches on the training device (torchvision decode_jpeg, nvJPEG on "
        "CUDA). Same batches when the shards hold 292x292 JPEGs (data_prep --resize 292)")})


@dataclass
class ModelSection:
    encoder: str = setting("resnet50", "a timm model name (resnet50: 2048 features a patch) or dcgan (the paper's "
                                       "InfoMax encoder)")
    depth: Optional[int] = setting(None, "dcgan: conv layers kept (the InfoMax result used 2)")
    kwargs: Dict[str, Any] = setting({}, "passed on to the encoder's constructor (e.g. {image_size: 64})")


@dataclass
class TaskSection:
    kind: str = setting("jigsaw-ce", "jigsaw-ce | jigsaw-mi | infomax | supervised (pretrain.tasks.kinds())")
    estimator: Optional[str] = setting(None, "MI bound for jigsaw-mi and infomax (eta-mine, dv-mine, ...; "
                                             "docs/bounds.md); null for the others")
    estimator_kwargs: Dict[str, Any] = setting({}, "options of the bound (e.g. {n_critic: 1})")
    kwargs: Dict[str, Any] = setting({}, "the task's head and witness options, passed on to build_task")


@dataclass
class OptimSection:
    # Paper, Appendix D: Adam (0.9, 0.999), 1e-4 for encoder and heads, 1e-2 for η, no decay.
    lr: float = setting(1e-4, "Adam learning rate of the encoder and heads (paper: 1e-4)")
    eta_lr: float = setting(1e-2, "Adam learning rate of η (paper: 1e-2)")
    beta1: float = setting(0.9, "Adam beta1")
    beta2: float = setting(0.999, "Adam beta2")
    weight_decay: float = setting(0.0, "Adam weight decay (paper: none)")
    lr_scaling: str = setting(
        "none", "with many workers: none keeps train.steps and lr as given (split data.images_per_batch over the "
                "workers to keep the paper's global batch); linear | sqrt read the config as one worker's run: "
                "each worker takes the full batch, steps are divided by the workers W and lr multiplied by W or "
                "sqrt(W) (η's lr stays)")
    warmup_steps: int = setting(0, "linear warm-up of the main lr over the first N steps (0: none)")


@dataclass
class TrainSection:
    num_workers: int = setting(1, "Ray Train workers (DDP ranks); each reserves train.gpus_per_worker GPUs (when "
                                  "used) and threads_per_worker + data.loader_workers CPUs")
    min_workers: Optional[int] = field(default=None, metadata={"help": (
        "elastic runs: Ray Train runs between min_workers and num_workers workers (always a divisor of "
        "data.virtual_shards), restarting from the last checkpoint on the workers left when nodes go and "
        "growing back when they return. null: a fixed num_workers")})
    use_gpu: Optional[bool] = setting(None, "null: use GPUs when the cluster has them")
    gpus_per_worker: float = setting(
        1.0, "GPUs a rank reserves: 1, a whole number, or a fraction (0.5: two ranks share a GPU; their process "
             "group is then gloo, as NCCL refuses two ranks on one device; for tests, not for speed)")
    bf16: bool = setting(False, "autocast the forward pass to bfloat16 (fast on GPUs and AVX-512 CPUs)")
    channels_last: bool = setting(False, "NHWC memory format for conv encoders (faster on CPU and GPU)")
    sync_batchnorm: bool = setting(False, "GPU only: batch-norm statistics over the global batch (CPU process "
                                          "groups cannot sync them); costs a host sync per BatchNorm layer a "
                                          "step (53 for a ResNet-50, where a step otherwise has one): the "
                                          "launcher warns when it is on")
    steps: int = setting(1000, "optimiser steps in total (a resumed run continues to this number)")
    report_every: int = setting(
        10, "every N steps the metrics are all-reduced and rank 0 writes TensorBoard and metrics.jsonl (one "
            "collective: cheap)")
    checkpoint_every: int = setting(100, "steps between checkpoints, a multiple of report_every")
    # A ray.train.report waits until the controller has taken the one before (Ray's default 2 s made a
    # report every step cost ~1.8 s); the end of a run waits two polls. 0.1 s cost no measurable step time
    # (benchmarks/results/train_step_exploration.md); a poll is one actor call per worker.
    controller_poll_s: float = setting(
        0.1, "how often Ray Train's controller polls the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, set for the "
             "run): a report and a failed worker wait up to this long; 0.5 keeps the load lower with hundreds of "
             "workers")
    upload_every_s: float = setting(
        10.0, "a run directory in a bucket: rank 0 uploads metrics.jsonl and TensorBoard events at most this "
              "often (each upload sends the whole grown file), and at every checkpoint and the end")
    bf16_grad_allreduce: bool = setting(
        False, "multi-node DDP: all-reduce gradients in bfloat16 (half the bytes on the network; NCCL only)")
    keep_checkpoints: Optional[int] = setting(None, "checkpoints kept, newest first (null: all)")
    image_every: int = setting(0, "TensorBoard grid of input batches every N steps (0: the first report only)")
    max_failures: int = setting(2, "worker failures Ray Train recovers from, restarting from the last checkpoint")
    resize_every_s: float = field(default=60.0, metadata={"help": (
        "elastic runs: how often Ray Train checks whether the cluster holds more (or fewer) workers "
        "than the group runs, and resizes it (restarting from the last checkpoint)")})
    threads_per_worker: int = setting(1, "torch threads per worker (one CPU each)")
    resource_wait_s: float = setting(
        60.0, "seconds to wait for the cluster to hold the workers' CPUs/GPUs (an autoscaler adding nodes) "
              "before failing with what is missing")
    deterministic: bool = setting(
        False, "GPU: deterministic kernels (torch.use_deterministic_algorithms, cuDNN without autotuning, cuBLAS's "
               "fixed workspace) and the gradients' mean over the workers summed in rank order (as on the CPU), so "
               "that a killed and resumed run ends bit for bit where an uninterrupted one does; slower than cuDNN's "
               "autotuned kernels and NCCL's all-reduce")
    interrupt_checkpoint_s: float = setting(
        180.0, "Ctrl-C or SIGTERM to the driver: when the last checkpoint is older than this many seconds of work, "
               "the workers write one more at their next report before the run stops (pretrain/interrupt.py)")
    compile: bool = setting(
        False, "torch.compile the task, forward and backward (on CUDA with CUDA graphs, for small batches bound "
               "by kernel launches); costs minutes at start-up")
    crash_at_step: Optional[int] = setting(None, "testing fault tolerance: the last rank exits hard once at this step")
    online_probe: bool = field(default=False, metadata={"help": (
        "a linear head on the encoder's detached features of the (labelled) training batches, its top-1 in "
        "each report: watch quality rise without stopping the run (pretrain/online_probe.py; every task kind; "
        "the feature eval reads: jigsaw, the mean of an image's 9 tile features)")})
    online_probe_lr: float = field(default=1e-3, metadata={"help": "Adam lr of the online probe's head"})


@dataclass
class TrackSection:
    mlflow_uri: Optional[str] = setting(
        None, "MLflow tracking URI (file:./mlruns, sqlite:///mlflow.db, http://host:5000); null: TensorBoard "
              "only. Needs pip install -e .[mlflow]; the driver logs params, metrics and the exported encoder")
    mlflow_experiment: str = setting("pretrain", "MLflow experiment name")


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
        refuse_interpolations(file_cfg, str(path))
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
        dotlist = OmegaConf.from_dotlist(list(overrides or []))
        refuse_interpolations(dotlist, "command line")
        cfg = OmegaConf.merge(cfg, dotlist)
    except OmegaConfBaseException as exc:
        raise _one_line(exc, "command line") from None
    return cfg


def refuse_interpolations(node, source: str, prefix: str = "") -> None:
    """A config is data: a ``${...}`` value (an OmegaConf interpolation or resolver such as
    ``${oc.env:AWS_SECRET_ACCESS_KEY}``, which would copy the environment into the run's name, files
    and checkpoints) is a :class:`ConfigError` naming the key, before anything resolves it."""
    from omegaconf import ListConfig

    if not isinstance(node, (DictConfig, ListConfig)):
        return
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        name = f"{prefix}{key}"
        if OmegaConf.is_interpolation(node, key):
            raise ConfigError(f"{source}: {name} is an interpolation (${{...}}); a config holds values, not "
                              f"references to the environment or other keys: write the value itself")
        refuse_interpolations(node._get_node(key), source, f"{name}.")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> DictConfig:
    """The pretraining config: :func:`merge_config` of :class:`PretrainConfig`, local paths made absolute."""
    return absolute_paths(merge_config(PretrainConfig, path, overrides))


def config_keys(schema: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default as YAML writes it, help)`` for every key of the dataclass ``schema``."""
    keys = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(default):
            keys += config_keys(type(default), prefix=f"{key}.")
            continue
        if isinstance(default, str) and default == MISSING:
            shown = "(required)"
        elif default is None or isinstance(default, bool):
            shown = str(default).lower().replace("none", "null")
        else:
            shown = str(default)
        keys.append((key, shown, f.metadata.get("help", "")))
    return keys


def defaults_help(schema: type) -> str:
    """One line per key of the dataclass ``schema``: ``key=default``, then what it does (the field's
    ``metadata["help"]``). For ``--help``: the defaults shown are the ones that apply."""
    return "\n".join(f"{f'  {key}={shown}':<34} {help}".rstrip() for key, shown, help in config_keys(schema))


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


# (section, key, lowest, lowest allowed itself, highest or None, None allowed): numbers the types let
# through but a worker would crash on (or train nonsense with). Comparisons are written so that NaN fails.
RANGES = (
    ("optim", "lr", 0.0, False, None, False),
    ("optim", "eta_lr", 0.0, False, None, False),
    ("optim", "beta1", 0.0, True, 1.0, False),
    ("optim", "beta2", 0.0, True, 1.0, False),
    ("optim", "weight_decay", 0.0, True, None, False),
    ("train", "keep_checkpoints", 1, True, None, True),
    ("train", "resource_wait_s", 0.0, True, None, False),
    ("train", "controller_poll_s", 0.0, False, None, False),
    ("train", "upload_every_s", 0.0, True, None, False),
    ("train", "image_every", 0, True, None, False),
    ("train", "crash_at_step", 0, True, None, True),
    ("data", "loader_workers", 0, True, None, False),
    ("data", "batches_per_epoch", 1, True, None, True),
)


def check_ranges(cfg: DictConfig) -> None:
    """Every number of :data:`RANGES` finite and in its range (``beta`` below 1), else a :class:`ConfigError`."""
    import math

    for section, key, low, low_ok, high, none_ok in RANGES:
        value = cfg[section][key]
        if value is None and none_ok:
            continue
        above = value >= low if low_ok else value > low
        below = high is None or value < high
        if not (math.isfinite(value) and above and below):
            bound = f"{'>=' if low_ok else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
            raise ConfigError(f"{section}.{key} must be a finite number {bound}, got {value}"
                              + ("; null means none" if none_ok else ""))


def validate(cfg: DictConfig, check_shards: bool = True) -> None:
    """Check what types cannot; raise :class:`ConfigError` with one line naming the key.

    Reads the shard manifest (cheap) so that missing shards fail here, not in a worker;
    ``check_shards=False`` skips that (a cost plan needs no data).
    """
    if OmegaConf.is_missing(cfg.data, "shards"):
        raise ConfigError("data.shards is required: a data_prep output directory (data.shards=DIR)")
    t = cfg.train
    check_ranges(cfg)
    if cfg.optim.lr_scaling not in ("none", "linear", "sqrt"):
        raise ConfigError(f"optim.lr_scaling must be none, linear or sqrt, got {cfg.optim.lr_scaling!r}")
    if cfg.optim.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps must be >= 0, got {cfg.optim.warmup_steps}")
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
    if d.decode_on not in ("host", "device"):
        raise ConfigError(f"data.decode_on must be host or device, got {d.decode_on!r}")
    if d.decode_on == "device" and d.augment_on != "device":
        raise ConfigError("data.decode_on=device needs data.augment_on=device (the device crops what it decodes)")
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
    if d.decode_on == "device" and manifest.get("image_format") != "jpg":
        raise ConfigError(f"data.decode_on=device decodes JPEG and {d.shards} holds {manifest.get('image_format')}; "
                          f"set data.decode_on=host or build the shards with --format jpg")
    if t.online_probe and not manifest["splits"][d.split].get("labelled", True):
        raise ConfigError(f"train.online_probe needs labels, and data.split {d.split!r} of {d.shards} has none "
                          f"(set train.online_probe=false, or pretrain on a labelled split)")
    if spec.needs_labels:
        if not manifest["splits"][d.split].get("labelled", True):
            raise ConfigError(f"data.split {d.split!r} of {d.shards} has no labels; task.kind={cfg.task.kind} "
                              f"trains on labels (choose a labelled split, e.g. data.split=train)")
        n_classes, given = len(manifest["class_names"]), cfg.task.kwargs.get("num_classes")
        if given != n_classes:
            raise ConfigError(f"task.kwargs.num_classes is {given}, but {d.shards} has {n_classes} classes; "
                              f"set task.kwargs.num_classes={n_classes}")
