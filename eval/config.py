"""The settings of a linear evaluation (`python -m eval.linear`): a dataclass is the one home of their
defaults, read like the pretraining config (:func:`pretrain.config.merge_config`: YAML, then
`key=value`; an unknown key is a one-line error naming it).

Kept apart from :mod:`eval.linear`: reading and checking the settings imports no torch.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING, OmegaConf

from pretrain.config import ConfigError, merge_config
from pretrain.config import setting as _setting


def _list_setting(default: list, help: str):
    return field(default_factory=lambda: list(default), metadata={"help": help})


PROTOCOLS = ("paper", "sweep")


# Feature extraction when `extract_batch_size` / `num_workers` are left null. On a GPU a forward pass
# takes milliseconds: larger batches, and loader processes so that decoding (9 crops an image for
# jigsaw) keeps up; on the CPU the forward pass is the bottleneck and loader processes would only take
# cores from it. Features do not depend on either (eval mode, a frozen encoder).
EXTRACTION_DEFAULTS = {"cpu": {"batch_size": 64, "num_workers": 0}, "cuda": {"batch_size": 256, "num_workers": 4}}


def extraction_settings(batch_size: int | None, num_workers: int | None, on_gpu: bool) -> tuple[int, int]:
    """``(images per forward pass, loader processes)``: the given ones, else the defaults of the device."""
    d = EXTRACTION_DEFAULTS["cuda" if on_gpu else "cpu"]
    return (d["batch_size"] if batch_size is None else batch_size,
            d["num_workers"] if num_workers is None else num_workers)


@dataclass
class LinearConfig:
    """Every setting of a linear evaluation, with its default (the one home of these defaults)."""
    checkpoint: Any = _setting(MISSING, "run directory (its latest checkpoint), checkpoint directory or checkpoint.pt; "
                                        "a list [A,B] evaluates several, in parallel on Ray")
    data: str = _setting(MISSING, "data_prep shard directory to probe on (e.g. data/shards/cifar10)")
    epochs: int = _setting(200, "probe epochs over the train features (paper: 200)")
    seeds: int = _setting(2, "probe seeds 0..N-1; results are mean ± std over them")
    out: Optional[str] = _setting(None, "results directory (null: runs/eval/<checkpoint>-<dataset>)")
    protocol: str = _setting("paper", "paper: one probe, Adam lr, no selection (the paper's Tables 2-3); sweep: a grid of "
                                      "heads in one pass, the best on a held-out share of the train split (see docs/evaluation.md)")
    lr: float = _setting(1e-4, "probe Adam learning rate (paper: 1e-4; protocol=paper)")
    sweep_lrs: List[float] = _list_setting([1e-4, 3e-4, 1e-3, 3e-3], "protocol=sweep: Adam learning rates of the grid")
    sweep_weight_decays: List[float] = _list_setting([0.0, 1e-4, 1e-3], "protocol=sweep: weight decays of the grid")
    sweep_batchnorm: List[bool] = _list_setting([False], "protocol=sweep: [false,true] adds each head again with a "
                                                        "BatchNorm before it (MAE's probe)")
    holdout_share: float = _setting(0.1, "protocol=sweep: share of the train split held out to choose the head (seeded)")
    holdout_seed: int = _setting(0, "protocol=sweep: seed of the held-out share (recorded in results.json)")
    batch_size: int = _setting(256, "probe batch size on the cached features")
    knn_k: int = _setting(20, "neighbours of the weighted kNN (the headline number)")
    knn_ks: List[int] = _list_setting([10, 20, 100, 200], "kNN also scored at these k, from the same one search")
    knn_temperature: float = _setting(0.07, "kNN vote weight exp(cos / T)")
    random_init: bool = _setting(False, "evaluate a randomly initialised encoder of the checkpoint's architecture (baseline)")
    train_split: Optional[str] = _setting(None, "split to train the probe on (null: train)")
    test_split: Optional[str] = _setting(None, "split to score on (null: test, else val)")
    cache_dir: Optional[str] = _setting("runs/feature_cache", "feature cache (null: no cache)")
    extract_batch_size: Optional[int] = _setting(
        None, "images per forward pass during extraction (null: {cpu[batch_size]} on the CPU, "
              "{cuda[batch_size]} on a GPU)".format(**EXTRACTION_DEFAULTS))
    num_workers: Optional[int] = _setting(
        None, "data loader processes for extraction, each a Ray CPU on a cluster (null: {cpu[num_workers]} on "
              "the CPU, {cuda[num_workers]} on a GPU)".format(**EXTRACTION_DEFAULTS))
    device: Optional[str] = _setting(None, "cpu or cuda (null: cuda when available)")
    ray_address: Optional[str] = _setting(None, "Ray cluster to run checkpoints and seeds on as parallel tasks (e.g. auto)")
    resource_wait_s: float = _setting(
        300.0, "on a Ray cluster without a GPU node: seconds to wait for the autoscaler to add a node for "
               "feature extraction (a GPU node with device=cuda) before deciding GPU or CPU from the nodes")
    progress: bool = _setting(True, "progress bars (redrawn on a terminal; a line every 30 s when piped or logged)")


def load_linear_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> LinearConfig:
    """Defaults <- YAML at `path` <- `key=value` overrides, as a :class:`LinearConfig`.

    Raises `ConfigError` (one line) for an unknown key, a wrong type or a missing checkpoint/data.
    """
    cfg = merge_config(LinearConfig, path, list(overrides))
    for key, example in (("checkpoint", "runs/NAME-TIME"), ("data", "data/shards/cifar10")):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required ({key}={example}; see --help)")
    cfg = OmegaConf.to_object(cfg)
    paths = cfg.checkpoint if isinstance(cfg.checkpoint, list) else [cfg.checkpoint]
    if not paths or not all(isinstance(c, (str, int)) for c in paths):
        raise ConfigError(f"checkpoint must be a path or a list [A,B] of paths, got {cfg.checkpoint!r}")
    cfg.checkpoint = [str(c) for c in paths]
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol={cfg.protocol!r} is not one of {', '.join(PROTOCOLS)} (see --help)")
    if not cfg.resource_wait_s >= 0:
        raise ConfigError(f"resource_wait_s must be >= 0 (seconds), got {cfg.resource_wait_s}")
    for key, least in (("extract_batch_size", 1), ("num_workers", 0)):
        if getattr(cfg, key) is not None and getattr(cfg, key) < least:
            raise ConfigError(f"{key} must be >= {least} or null (the device's default), got {getattr(cfg, key)}")
    return cfg
