"""Training checkpoints: one ``checkpoint.pt`` per Ray Train checkpoint directory.

Format (``docs/design.md``), loaded with ``torch.load(..., weights_only=True)``::

    {"format": 1, "step": int, "config": dict (resolved config, plain types),
     "encoder": state_dict, "task": state_dict (heads + estimator incl. η, without the encoder),
     "optimizer": {"main": state_dict, "eta": state_dict or None},
     "rng": [RNG state per virtual shard], "data_position": [stream position per virtual shard],
     "permutations": LongTensor [100, 9] or None,
     "permutations_sha256": sha256 of the set's canonical text (data_prep.jigsaw) or None}

Beside it, ``checkpoint.pt.sha256`` (``sha256sum`` format, so ``sha256sum -c`` checks it too) is
written atomically *after* the payload: a checkpoint is complete only once its checksum is there, and
a payload that does not match its checksum (truncated, flipped bytes) is never read.

Checkpoint directories are named ``checkpoint_<step, 9 digits>`` so the latest sorts last. They
sit in the Ray Train experiment directory, which is the run directory itself unless
``run.storage_path`` points elsewhere (then ``<storage_path>/<run dir name>``). Run and checkpoint
paths may be ``s3://``/``gs://`` URLs (:mod:`storage`); they are then returned as ``str``.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

import storage
from storage.files import atomic_write, atomic_write_text, sha256_file
from data_prep.jigsaw import permutations_sha256
from pretrain.models import build_encoder_from_config
from pretrain.run_dir import experiment_dir, step_of

FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"
CHECKSUM_FILE = CHECKPOINT_FILE + ".sha256"
_REQUIRED = ("format", "step", "config", "encoder", "task")


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
    """This process's RNG states (Python, NumPy, torch CPU, and its own CUDA device) as plain types and tensors.

    ``cuda``: the state of this rank's device only (``torch.cuda.current_device()``, which Ray Train
    sets for each worker), or None without CUDA. Ray shows every worker of a node all of its GPUs, so
    the states of every visible device would be one per GPU of the node: a restart on a node with
    fewer GPUs could not restore them, and one with as many would hand a rank another GPU's state.
    """
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
        "cuda": torch.cuda.get_rng_state(torch.cuda.current_device()) if torch.cuda.is_available() else None,
    }
    return state


def restore_rng(state: Mapping) -> None:
    """Restore the RNG states captured by :func:`capture_rng` (the CUDA state into this rank's device)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
         npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if torch.is_tensor(state.get("cuda")) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], torch.cuda.current_device())


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
    online_probe: dict | None = None,
) -> Path:
    """Write ``directory/checkpoint.pt`` (atomically) and return its path.

    ``task`` is the unwrapped task module (not the DDP wrapper); its encoder is stored apart
    under ``"encoder"`` so evaluation can load it without the heads. ``rng`` and
    ``data_position`` hold one entry per virtual shard (shard order; :mod:`pretrain.virtual_shards`).
    ``online_probe``: the state of the online probe (:mod:`pretrain.online_probe`; the same on every
    rank), or None.
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
        "online_probe": online_probe,
    }
    path = directory / CHECKPOINT_FILE
    with atomic_write(path) as f:
        torch.save(payload, f)
    atomic_write_text(directory / CHECKSUM_FILE, f"{sha256_file(path)}  {CHECKPOINT_FILE}\n")
    return path


def checksum_problem(file: str | os.PathLike, digest: str | None = None) -> str | None:
    """Why ``file`` (a ``checkpoint.pt``, local or URL) cannot be trusted, or None when it matches its
    checksum. ``digest``: the file's SHA-256 when the caller already read it (else it is read here)."""
    name, sidecar = storage.basename(file), str(file) + ".sha256"
    if not storage.isfile(sidecar):
        return f"no {name}.sha256 beside it (an interrupted write)"
    if digest is None and not storage.isfile(file):
        return f"{name} is missing"
    if storage.read_text(sidecar).split()[:1] != [digest or storage.sha256(file)]:
        return f"{name} does not match {name}.sha256 (truncated or modified after it was written)"
    return None


def newest_verified(experiment_dir: str | os.PathLike) -> tuple[Path | str | None, list[str]]:
    """``(newest checkpoint directory whose payload matches its checksum, ["<dir>: why skipped", ...])``.

    Every ``checkpoint_<step>`` directory counts, whether or not Ray Train's own record of the run
    lists it (after a driver kill that record can lag the directory). The skipped ones are newer
    than the one returned.
    """
    found = sorted((step, name) for name in storage.listdir(experiment_dir) if (step := step_of(name)) is not None)
    skipped = []
    for _, name in reversed(found):
        directory = storage.as_path(storage.join(experiment_dir, name))
        problem = checksum_problem(storage.join(directory, CHECKPOINT_FILE))
        if problem is None:
            return directory, skipped
        skipped.append(f"{name}: {problem}")
    return None, skipped


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
        child = storage.as_path(storage.join(experiment_dir, name))
        if step_of(name) is not None and storage.isfile(storage.join(child, CHECKPOINT_FILE)):
            found.append((step_of(name), child))
    return [p for _, p in sorted(found)]


def resolve_checkpoint_file(path: str | os.PathLike) -> Path | str:
    """The ``checkpoint.pt`` that ``path`` names.

    ``path`` may be the file itself, a checkpoint directory, or a run directory (its newest
    checkpoint that matches its checksum; newer damaged ones are named in a warning). Raises
    ``FileNotFoundError`` or ``ValueError`` with a one-line message otherwise.
    """
    path = storage.as_path(path)
    if storage.isfile(path):
        return path
    if not storage.exists(path):
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if storage.isfile(storage.join(path, CHECKPOINT_FILE)):
        return storage.as_path(storage.join(path, CHECKPOINT_FILE))
    exp = experiment_dir(path) if checkpoint_dirs(experiment_dir(path)) else path
    if not checkpoint_dirs(exp):
        raise FileNotFoundError(
            f"no checkpoint found in {path}: expected {CHECKPOINT_FILE} or checkpoint_<step>/ "
            f"directories (did the run reach train.checkpoint_every steps?)"
        )
    newest, skipped = newest_verified(exp)
    if newest is None:
        raise ValueError(f"no intact checkpoint in {exp}: {'; '.join(skipped)}")
    if skipped:
        warnings.warn(f"using {storage.basename(newest)}, skipping newer damaged checkpoint(s): {'; '.join(skipped)}")
    return storage.as_path(storage.join(newest, CHECKPOINT_FILE))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint (file, checkpoint directory or run directory).

    A checkpoint with a ``checkpoint.pt.sha256`` beside it is read only if it matches (a lone file
    without one, e.g. copied out of its run, is read as it is).

    Raises ``FileNotFoundError`` or a one-line ``ValueError`` for a file that is not a
    checkpoint of this format.
    """
    file = resolve_checkpoint_file(path)
    try:  # read once: checked against its checksum and loaded from the same bytes
        data = storage.read_bytes(file)
        digest = hashlib.sha256(data).hexdigest()
    except FileNotFoundError:
        data = digest = None
    if storage.isfile(str(file) + ".sha256") and (problem := checksum_problem(file, digest)):
        raise ValueError(f"checkpoint {file} is damaged: {problem}; resume or evaluate an earlier checkpoint")
    try:
        if data is None:
            raise FileNotFoundError(f"{file} is missing")
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
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
    payload["sha256"] = digest  # of the bytes loaded (eval keys its feature cache by it)
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
