"""Training checkpoints: one ``checkpoint.pt`` per Ray Train checkpoint directory.

Format (``docs/design.md``), loaded with ``torch.load(..., weights_only=True)``::

    {"format": 1, "step": int, "config": dict (resolved config, plain types),
     "encoder": state_dict, "task": state_dict (heads + estimator incl. η, without the encoder),
     "optimizer": {"main": state_dict, "eta": state_dict or None},
     "rng": [per-rank RNG state], "data_position": [per-rank stream position],
     "permutations": LongTensor [100, 9] or None,
     "permutations_sha256": sha256 of the set's canonical text (data_prep.jigsaw) or None}

Checkpoint directories are named ``checkpoint_<step, 9 digits>`` so the latest sorts last. They
sit in the Ray Train experiment directory, which is the run directory itself unless
``run.storage_path`` points elsewhere (then ``<storage_path>/<run dir name>``). Run and checkpoint
paths may be ``s3://``/``gs://`` URLs (:mod:`data_prep.storage`); they are then returned as ``str``.
"""
from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from data_prep import storage
from data_prep.files import atomic_write
from data_prep.jigsaw import permutations_sha256

FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
_DIR_RE = re.compile(r"^checkpoint_(\d+)$")
_REQUIRED = ("format", "step", "config", "encoder", "task")


def checkpoint_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimiser steps."""
    return f"checkpoint_{step:09d}"


# ----------------------------------------------------------------------------- building models


def build_encoder_from_config(model: Mapping[str, Any]) -> nn.Module:
    """Build the encoder described by the ``model`` section of a resolved config.

    ``model["encoder"]`` is a name for ``pretrain.models.build_encoder`` (a timm model or
    ``dcgan``); ``model["depth"]`` (if not None) and ``model["kwargs"]`` are passed on.
    """
    from pretrain.models import build_encoder

    kwargs = dict(model.get("kwargs") or {})
    if model.get("depth") is not None:
        kwargs["depth"] = model["depth"]
    return build_encoder(model["encoder"], **kwargs)


def _encoder_prefix(task: nn.Module) -> str:
    """The state-dict prefix under which ``task.encoder`` sits inside ``task`` (e.g. ``encoder.``)."""
    for name, module in task.named_modules():
        if module is task.encoder and name:
            return name + "."
    raise ValueError("task.encoder is not a submodule of the task; cannot split its state")


def split_task_state(task: nn.Module) -> tuple[dict, dict]:
    """Split ``task.state_dict()`` into ``(encoder_state, rest_state)`` (heads + estimator)."""
    prefix = _encoder_prefix(task)
    encoder_state, rest = {}, {}
    for key, value in task.state_dict().items():
        if key.startswith(prefix):
            encoder_state[key[len(prefix):]] = value
        else:
            rest[key] = value
    return encoder_state, rest


def load_task_state(task: nn.Module, encoder_state: Mapping, rest_state: Mapping) -> None:
    """Inverse of :func:`split_task_state`: load both parts into ``task`` (strict)."""
    prefix = _encoder_prefix(task)
    merged = dict(rest_state)
    merged.update({prefix + k: v for k, v in encoder_state.items()})
    task.load_state_dict(merged, strict=True)


# ----------------------------------------------------------------------------- RNG state


def capture_rng() -> dict:
    """This process's RNG states (Python, NumPy, torch CPU and CUDA) as plain types and tensors."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: Mapping) -> None:
    """Restore the RNG states captured by :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
         npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(obj):
    if isinstance(obj, (tuple, list)):
        return [_to_lists(o) for o in obj]
    return obj


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    step: int,
    config: Mapping,
    task: nn.Module,
    optimizer: nn.Module | torch.optim.Optimizer,
    eta_optimizer: torch.optim.Optimizer | None,
    rng: list,
    data_position: list,
    permutations: torch.Tensor | None,
) -> Path:
    """Write ``directory/checkpoint.pt`` (atomically) and return its path.

    ``task`` is the unwrapped task module (not the DDP wrapper); its encoder is stored apart
    under ``"encoder"`` so evaluation can load it without the heads. ``rng`` and
    ``data_position`` hold one entry per rank (rank order).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder_state, rest = split_task_state(task)
    payload = {
        "format": FORMAT,
        "step": int(step),
        "config": _plain(config),
        "encoder": encoder_state,
        "task": rest,
        "optimizer": {
            "main": optimizer.state_dict(),
            "eta": eta_optimizer.state_dict() if eta_optimizer is not None else None,
        },
        "rng": rng,
        "data_position": data_position,
        "permutations": None if permutations is None else permutations.to(torch.long).cpu(),
        "permutations_sha256": None if permutations is None else permutations_sha256(permutations.cpu().numpy()),
    }
    path = directory / CHECKPOINT_FILE
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def _plain(config: Mapping) -> dict:
    """A resolved config as plain dicts/lists (OmegaConf containers are converted)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return OmegaConf.to_container(config, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(config)


def checkpoint_dirs(experiment_dir: str | os.PathLike) -> list[Path | str]:
    """Checkpoint directories holding a ``checkpoint.pt`` under ``experiment_dir``, oldest first."""
    found = []
    for name in storage.listdir(experiment_dir):
        m = _DIR_RE.match(name)
        child = _path(storage.join(experiment_dir, name))
        if m and storage.isfile(storage.join(child, CHECKPOINT_FILE)):
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def _path(path: str | os.PathLike) -> Path | str:
    """A local path as ``Path``, a URL as ``str`` (``Path`` would mangle ``s3://`` into ``s3:/``)."""
    return str(path) if storage.is_url(path) else Path(path)


def experiment_dir(run_dir: str | os.PathLike) -> Path | str:
    """Where Ray Train keeps the checkpoints of ``run_dir``.

    The run directory itself, unless its ``config.yaml`` names a ``run.storage_path``; then
    ``<storage_path>/<run dir name>``.
    """
    run_dir = _path(run_dir)
    cfg_path = storage.join(run_dir, CONFIG_FILE)
    if storage.isfile(cfg_path):
        import yaml

        cfg = yaml.safe_load(storage.read_text(cfg_path)) or {}
        experiments = (cfg.get("run") or {}).get("storage_path")
        if experiments:
            return _path(storage.join(experiments, storage.basename(run_dir)))
    return run_dir


def resolve_checkpoint_file(path: str | os.PathLike) -> Path | str:
    """The ``checkpoint.pt`` that ``path`` names.

    ``path`` may be the file itself, a checkpoint directory, or a run directory (its latest
    checkpoint). Raises ``FileNotFoundError`` with a one-line message otherwise.
    """
    path = _path(path)
    if storage.isfile(path):
        return path
    if not storage.exists(path):
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if storage.isfile(storage.join(path, CHECKPOINT_FILE)):
        return _path(storage.join(path, CHECKPOINT_FILE))
    dirs = checkpoint_dirs(experiment_dir(path)) or checkpoint_dirs(path)
    if not dirs:
        raise FileNotFoundError(
            f"no checkpoint found in {path}: expected {CHECKPOINT_FILE} or checkpoint_<step>/ "
            f"directories (did the run reach train.checkpoint_every steps?)"
        )
    return _path(storage.join(dirs[-1], CHECKPOINT_FILE))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint (file, checkpoint directory or run directory).

    Raises ``FileNotFoundError`` or a one-line ``ValueError`` for a file that is not a
    checkpoint of this format.
    """
    file = resolve_checkpoint_file(path)
    try:
        source = io.BytesIO(storage.read_bytes(file)) if storage.is_url(file) else file
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, foreign pickle, truncated write
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read checkpoint {file}: {first}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{file} is not a pretraining checkpoint (expected a dict)")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"{file} is not a pretraining checkpoint: missing keys {missing}")
    if payload["format"] != FORMAT:
        raise ValueError(
            f"{file} has checkpoint format {payload['format']}, this code reads format {FORMAT}"
        )
    payload["path"] = str(file)
    return payload


def load_encoder(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load the pretrained encoder of a run directory, checkpoint directory or file.

    Returns ``(encoder, config)``: the encoder is built from ``config["model"]``, loaded with
    the checkpoint's weights (strict) and put in eval mode; ``config`` is the resolved run config
    as plain dicts. The encoder maps images [B, 3, H, W] to features [B, encoder.feature_dim].
    """
    return encoder_from_payload(load_checkpoint(path))


def encoder_from_payload(payload: dict) -> tuple[nn.Module, dict]:
    """``(encoder, config)`` from an already loaded checkpoint (see :func:`load_encoder`)."""
    config = payload["config"]
    if "model" not in config or "encoder" not in config.get("model", {}):
        raise ValueError(f"{payload['path']}: config has no model.encoder; cannot rebuild the encoder")
    encoder = build_encoder_from_config(config["model"])
    try:
        encoder.load_state_dict(payload["encoder"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(
            f"{payload['path']}: encoder weights do not fit model.encoder="
            f"{config['model']['encoder']!r}: {first}"
        ) from None
    encoder.eval()
    return encoder, config
