"""Check that an output directory can be written before any work starts.

Each entry point (shard builds, pretraining, evaluation) checks its output directories first, so
that a read-only or mistyped path costs one line instead of a traceback after minutes of work.
The check creates the directory and a temporary file in it: permission bits, read-only mounts,
a path under a regular file and a full disk all fail it, for root too. An object-store URL
(``s3://``, ``gs://``) is checked by one request for its bucket: a bad scheme, a missing bucket and
missing credentials fail it, and nothing local is made.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from storage import StorageError, check_bucket, is_url


class NotWritableError(OSError):
    """A directory that must be written cannot be; the message is one line naming it."""


def check_writable_dir(path: str | os.PathLike, what: str, hint: str = "") -> Path | str:
    """Create ``path`` (with parents) if needed and prove a file can be written in it; for a URL, prove
    its bucket is there and these credentials can reach it (:func:`storage.check_bucket`).

    ``what`` names the directory in the message (e.g. ``run.root``), ``hint`` says how to choose
    another one. Returns the absolute path (a URL as given); raises :class:`NotWritableError`.
    """
    if is_url(str(path)):  # never Path(): it would turn s3://b/k into a local folder s3:/b/k
        try:
            check_bucket(str(path))
        except StorageError as e:
            raise NotWritableError(f"{what}: {e}") from None
        return str(path)
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
