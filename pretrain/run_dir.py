"""The run directory: its name, where it goes and what it holds.

Every pretraining launch writes to ``<home>/<run.name>-<YYYYmmdd-HHMMSS>[-n]``, where ``<home>`` is
``run.root``, or a URL ``run.storage_path`` (with checkpoints in a bucket there is no shared disk for
the rest of the run either). One is found again by parsing names with the same format that made
them. Inside::

    config.yaml           the resolved config (``--resume RUN_DIR`` reads it back)
    metrics.jsonl         one record per report, which the driver follows
    tb/                   TensorBoard
    nonfinite.json        where a non-finite loss stopped the run
    checkpoint_<step>/    Ray Train's checkpoints, here or in ``<local run.storage_path>/<run dir name>/``
"""
from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path

import yaml

import storage

TIME_FORMAT = "%Y%m%d-%H%M%S"  # the launch time in a run directory's name
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
NONFINITE_FILE = "nonfinite.json"
CRASH_MARKER = ".crashed_at_step"  # train.crash_at_step's fault injection: once per run
CHECKPOINT_PREFIX = "checkpoint_"


def run_home(run) -> str:
    """Where a config's run directories go (``run`` is the config's ``run`` section): a URL
    ``run.storage_path`` (it then holds the whole run), else ``run.root``."""
    return run.storage_path if run.storage_path and storage.is_url(run.storage_path) else run.root


def run_dir_name(name: str, when: datetime, n: int = 0) -> str:
    """``<name>-<YYYYmmdd-HHMMSS>``, with ``-<n>`` for the ``n``-th other launch in the same second."""
    base = f"{name}-{when.strftime(TIME_FORMAT)}"
    return f"{base}-{n}" if n else base


def parse_run_dir_name(dirname: str, name: str) -> tuple[datetime, int] | None:
    """``(launch time, n)`` of a directory name made by :func:`run_dir_name` for ``name``, else None."""
    if not dirname.startswith(f"{name}-"):
        return None
    rest = dirname[len(name) + 1:]
    head, _, tail = rest.rpartition("-")
    for stamp, n in ((rest, 0), (head, int(tail) if tail.isdigit() else -1)):
        with contextlib.suppress(ValueError):
            when = datetime.strptime(stamp, TIME_FORMAT)
            # strptime also takes unpadded fields: only the exact name run_dir_name writes counts
            if n >= 0 and run_dir_name(name, when, n) == dirname:
                return when, n
    return None


def new_run_dir(cfg) -> Path | str:
    """A fresh ``<run_home>/<run.name>-<YYYYmmdd-HHMMSS>[-n]`` for ``cfg`` (absolute; not created)."""
    home, when = storage.resolve(run_home(cfg.run)), datetime.now()
    n = 0
    while storage.exists(run_dir := storage.join(home, run_dir_name(cfg.run.name, when, n))):
        n += 1
    return storage.as_path(run_dir)


def latest_run_dir(root: Path | str, name: str) -> Path | str | None:
    """The newest run directory of ``name`` under ``root`` (a path or URL) holding its config.yaml, or None."""
    found = []
    for child in storage.listdir(root):
        launched = parse_run_dir_name(child, name)
        path = storage.join(root, child)
        if launched and storage.isfile(storage.join(path, CONFIG_FILE)):
            found.append((launched, storage.as_path(path)))
    return max(found)[1] if found else None


def ray_storage_path(run, run_dir: Path | str) -> str:
    """Ray Train's ``storage_path`` for ``run_dir``: its experiment directory is
    ``<storage_path>/<run dir name>``, the run directory itself unless ``run.storage_path`` is set."""
    return storage.resolve(run.storage_path) if run.storage_path else storage.parent(run_dir)


def experiment_dir(run_dir: str | os.PathLike) -> Path | str:
    """Where Ray Train keeps the checkpoints of ``run_dir``: the run directory itself, unless its
    ``config.yaml`` names a ``run.storage_path``; then ``<storage_path>/<run dir name>``."""
    run_dir = storage.as_path(run_dir)
    cfg_path = storage.join(run_dir, CONFIG_FILE)
    if storage.isfile(cfg_path):
        experiments = ((yaml.safe_load(storage.read_text(cfg_path)) or {}).get("run") or {}).get("storage_path")
        if experiments:
            return storage.as_path(storage.join(experiments, storage.basename(run_dir)))
    return run_dir


def checkpoint_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimiser steps."""
    return f"{CHECKPOINT_PREFIX}{step:09d}"


def step_of(directory: str | os.PathLike) -> int | None:
    """The step in a ``checkpoint_<step>`` directory name, else None."""
    name = storage.basename(directory)
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def run_dir_of(checkpoint_file: Path | str, config: dict) -> str | None:
    """The local run directory (the one with ``config.yaml``) a checkpoint file belongs to, or None
    for a checkpoint outside one or in a bucket. Checkpoints sit in ``<run dir>/checkpoint_*/``, or in
    ``<run.storage_path>/<run dir name>/checkpoint_*/`` with the run directory under ``run.root``."""
    if storage.is_url(checkpoint_file):
        return None
    ckpt_dir = Path(checkpoint_file).resolve().parent
    if step_of(ckpt_dir) is None:
        return None
    candidates = [ckpt_dir.parent]
    root = (config.get("run") or {}).get("root")
    if root:
        candidates.append(Path(root) / ckpt_dir.parent.name)
    return next((str(c) for c in candidates if (c / CONFIG_FILE).is_file()), None)
