"""One driver per run directory: two ``--resume`` of one run would interleave its metrics and
write the same checkpoints. The lock is an OS file lock (``filelock``), released by the kernel when
its holder dies, so a killed driver never leaves a stale lock behind."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

LOCK_FILE = ".run.lock"


class RunDirInUse(RuntimeError):
    """Another process holds the run directory's lock (one-line message)."""


@contextlib.contextmanager
def run_dir_lock(run_dir) -> Iterator[None]:
    """Hold ``run_dir/.run.lock`` for the body; raise :class:`RunDirInUse` at once if it is held.

    A run directory behind a URL (``s3://``, ``gs://``) is not locked: object stores offer no lock
    that the kernel releases when its holder dies.
    """
    import storage

    if storage.is_url(run_dir):
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        owner = path.with_suffix(".pid")
        who = f" (pid {owner.read_text().strip()})" if owner.is_file() else ""
        raise RunDirInUse(f"run directory {run_dir} is in use by another driver{who}; "
                          f"wait for it to end, or continue the run there") from None
    try:
        path.with_suffix(".pid").write_text(str(os.getpid()))
        yield
    finally:
        lock.release()
