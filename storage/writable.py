"""Check that an output directory can be written before any work starts.

Each entry point (shard builds, pretraining, evaluation) checks its output directories first, so
that a read-only or mistyped path costs one line instead of a traceback after minutes of work.
The check creates the directory and a temporary file in it: permission bits, read-only mounts,
a path under a regular file and a full disk all fail it, for root too.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from storage import is_url


class NotWritableError(OSError):
    """A directory that must be written cannot be; the message is one line naming it."""


def check_writable_dir(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """Create ``path`` (with parents) if needed and prove a file can be written in it.

    ``what`` names the directory in the message (e.g. ``run.root``), ``hint`` says how to choose
    another one. Returns the absolute path; raises :class:`NotWritableError`.
    """
    if is_url(str(path)):  # Path() would turn s3://b/k into a local folder s3:/b/k
        raise ValueError(f"{what} {path}: a URL is not a local directory (check a bucket with storage.check_bucket)")
    path = Path(path).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        blocker = next((p for p in [path, *path.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            reason = f"{blocker} is a file, not a directory"
        raise NotWritableError(f"{what} {path} is not writable ({reason})" + (f"; {hint}" if hint else "")) from None
    return path
