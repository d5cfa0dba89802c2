"""Local files: the one sha256 helper and the one atomic-write helper of the project.

Every file a later reader trusts (shards, manifests, checkpoints, cached features) is written with
:func:`atomic_write`, so a crash or a SIGKILL leaves either the old file or the new one, never half a
file; and every checksum recorded or compared is :func:`sha256_file`. Both live in ``data_prep``
because that is the bottom of the dependency chain (``data_prep`` <- ``pretrain`` <- ``eval``).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path
from typing import IO, Iterator

TMP_SUFFIX = ".tmp"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (a ResNet-50 checkpoint takes well under a second)."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f: IO[bytes]) -> str:
    """Hex SHA-256 of what is left to read in the binary file object ``f`` (a local file or an
    fsspec object stream), read in 4 MiB blocks."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 22), b""):
        h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit flush, fsync and rename it onto ``path``.

    The temporary name is ``<name>.<random>.tmp`` in the same directory (a rename within one file
    system is atomic; the random part keeps two writers of the same file apart). If the body raises,
    the temporary file is removed and ``path`` is untouched. A process killed inside the body leaves
    a ``*.tmp`` file that nothing reads; writers of whole directories (the shard builder) delete them.

    Example: ``with atomic_write(p) as f: torch.save(obj, f)``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    # "x" rather than "w": never clobber a file of the same name; normal umask permissions (not mkstemp's 0600)
    f = open(tmp, mode.replace("w", "x"))
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk; not every OS allows
    # opening a directory (Windows), and losing only durability there is acceptable.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
