"""Where data and runs live: a local path or an object-store URL (``s3://BUCKET/...``, ``gs://BUCKET/...``).

The one home of the project's URL logic. A string with a ``scheme://`` prefix is a URL and is never
read as a local path (``Path("s3://b/x")`` would quietly make a local folder ``s3:``); an unknown
scheme is an error. URLs go through fsspec (s3fs, gcsfs), so credentials and endpoints come from the
standard places: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, instance roles and
``AWS_ENDPOINT_URL`` for S3-compatible stores; GCP application-default credentials for ``gs://``.

Writes are whole-object: a URL target is written to a local temporary file first and uploaded in
one ``put``, which an object store makes visible all at once or not at all, the counterpart of the
write-then-rename of a local file.
"""
from __future__ import annotations

import contextlib
import math
import os
import posixpath
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import IO, Iterator

from storage import files

SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(OSError):
    """A URL that cannot be used (bad scheme, missing bucket, no credentials); one-line message."""


def is_url(path) -> bool:
    """True for ``scheme://...`` strings: they name object-store locations, never local paths."""
    return bool(_URL.match(str(path)))


def as_path(path) -> "Path | str":
    """A local path as ``Path``, a URL as ``str`` (``Path`` would mangle ``s3://`` into ``s3:/``)."""
    return str(path) if is_url(path) else Path(path)


def check_url(url: str) -> None:
    """Raise :class:`StorageError` unless ``url`` is ``s3://BUCKET[/...]`` or ``gs://BUCKET[/...]``."""
    scheme = _URL.match(url).group(1).lower()
    if scheme not in SCHEMES:
        raise StorageError(f"{url}: unsupported URL scheme {scheme}://; use s3://BUCKET/PATH, gs://BUCKET/PATH "
                           f"or a local path")
    if not url[len(scheme) + 3:].split("/", 1)[0]:
        raise StorageError(f"{url}: no bucket in the URL; write {scheme}://BUCKET/PATH")


def _fs(url: str):
    """(fsspec file system, path inside it) for a checked URL."""
    check_url(url)
    import fsspec

    try:
        # no listing cache: another process (a worker, a resumed driver) writes the objects we read
        return fsspec.core.url_to_fs(url, use_listings_cache=False)
    except ImportError as exc:
        package = SCHEMES[_URL.match(url).group(1).lower()]
        raise StorageError(f"{url}: reading this scheme needs the package {package} ({exc})") from None


def resolve(path) -> str:
    """A URL unchanged, a local path made absolute (Ray workers run in another directory)."""
    path = str(path)
    if is_url(path):
        check_url(path)
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(base, *names: str) -> str:
    """``base/name/...`` for a URL or a local path."""
    base = str(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def local_only(path, what: str) -> Path:
    """``path`` as a local ``Path``, for an output a command writes only on this machine; a URL is a
    :class:`StorageError` naming ``what`` (never a local folder named ``s3:``)."""
    if is_url(path):
        raise StorageError(f"{what} {path}: this command writes local files only; give a local folder "
                           f"(and copy it to the bucket afterwards)")
    return Path(path)


def basename(path) -> str:
    return posixpath.basename(str(path).rstrip("/")) if is_url(path) else os.path.basename(str(path).rstrip(os.sep))


def parent(path) -> str:
    path = str(path).rstrip("/")
    return path.rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)


# ----------------------------------------------------------------------------- errors


def describe(exc: BaseException, url: str) -> str:
    """One line saying what went wrong with ``url`` and what to do."""
    name = type(exc).__name__
    text = " ".join(str(exc).split()) or name
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError") or "credentials" in text.lower():
        where = ("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile in ~/.aws or an instance role"
                 if url.startswith("s3://") else "`gcloud auth application-default login` or a service account")
        return f"{url}: no credentials for the object store ({text}); provide them via {where}"
    if isinstance(exc, PermissionError):
        return f"{url}: access denied ({text}); check the credentials' permissions on the bucket"
    return f"{url}: {name}: {text}"


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
    """Turn fsspec/botocore errors about ``url`` into a one-line :class:`StorageError`."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:  # botocore, aiohttp and google-auth errors have no common base
        raise StorageError(describe(exc, url)) from None


def check_bucket(url: str) -> None:
    """Fail early, in one line, if the bucket of ``url`` is missing or the credentials cannot read it."""
    fs, path = _fs(url)
    bucket = path.split("/", 1)[0]
    scheme = _URL.match(url).group(1)
    with _errors(url):
        try:
            fs.info(bucket)  # one HEAD request for the bucket itself
        except FileNotFoundError:
            raise StorageError(f"{url}: bucket {scheme}://{bucket} does not exist (or is not visible to these "
                               f"credentials); create it or fix the URL") from None


# ----------------------------------------------------------------------------- reading


def _info(path: str) -> dict | None:
    """fsspec's info of a URL, None when nothing is there. (fsspec's own exists/isfile answer False
    for any error, which would read missing credentials as a missing file.)"""
    fs, p = _fs(path)
    with _errors(path):
        try:
            return fs.info(p)
        except FileNotFoundError:
            return None


def exists(path) -> bool:
    """A file, directory, object or non-empty URL prefix is there."""
    return os.path.exists(path) if not is_url(path) else _info(str(path)) is not None


def isfile(path) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    info = _info(str(path))
    return info is not None and info["type"] == "file"


def listdir(path) -> list[str]:
    """Names (not paths) of the entries directly under ``path``; [] if there is none."""
    if not is_url(path):
        return os.listdir(path) if os.path.isdir(path) else []
    fs, p = _fs(str(path))
    with _errors(str(path)):
        try:
            return [posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False)]
        except FileNotFoundError:
            return []


def open_read(path) -> IO[bytes]:
    """A binary file object for reading (seekable; ranged reads for a URL)."""
    if not is_url(path):
        return open(path, "rb")
    fs, p = _fs(str(path))
    with _errors(str(path)):
        return fs.open(p, "rb")


def read_bytes(path) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def sha256(path) -> str:
    """Hex SHA-256 of a file's or object's bytes (:func:`storage.files.sha256_file` for local files)."""
    if not is_url(path):
        return files.sha256_file(path)
    with open_read(path) as f:
        return files.sha256_stream(f)


# ----------------------------------------------------------------------------- writing


def makedirs(path) -> None:
    """Create a local directory (and parents); nothing to do for a URL (object stores have no folders)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def write_atomic(path) -> Iterator[IO[bytes]]:
    """A binary file that appears at ``path`` whole, when the block exits cleanly, or not at all.

    Local: :func:`storage.files.atomic_write`. URL: a local temporary file uploaded in one put (an
    object is visible only once its upload completes). ``f.name`` names the local file in both cases.
    """
    path = str(path)
    if is_url(path):
        fs, p = _fs(path)
        with tempfile.NamedTemporaryFile(prefix="upload-", suffix=".tmp") as f:
            yield f
            f.flush()
            with _errors(path):
                fs.put_file(f.name, p)
        return
    with files.atomic_write(path, "wb") as f:
        yield f


def write_bytes(path, data: bytes) -> None:
    with write_atomic(path) as f:
        f.write(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove(path) -> None:
    """Delete a file or object; nothing if it is not there."""
    if not is_url(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    fs, p = _fs(str(path))
    with _errors(str(path)):
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(p)


def remove_tree(path) -> None:
    """Delete a directory (or every object under a URL prefix); nothing if it is not there."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = _fs(str(path))
    with _errors(str(path)):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(p, recursive=True)


class LocalMirror:
    """A local directory standing for ``path``, for writers that append (TensorBoard, ``metrics.jsonl``).

    Local ``path``: the directory itself, and :meth:`push` does nothing. URL: a temporary directory,
    seeded with the ``fetch`` files already at the URL (to append to them), whose new or grown files
    :meth:`push` uploads; an object cannot be appended to, so a changed file is uploaded whole. The
    temporary directory is removed when the mirror is garbage-collected or the process exits (what
    was not pushed by then is not uploaded); a killed process leaves it behind in the temporary folder.
    """

    def __init__(self, path, fetch: tuple[str, ...] = ()):
        self.path = str(path)
        self._seen: dict[str, tuple[int, int]] = {}
        self._pushed_at = -math.inf  # time.monotonic() of the last push that uploaded
        if not is_url(self.path):
            os.makedirs(self.path, exist_ok=True)
            self.dir = self.path
            return
        self.dir = tempfile.mkdtemp(prefix="mirror-")
        weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)
        for name in fetch:
            try:
                data = read_bytes(join(self.path, name))
            except FileNotFoundError:
                continue  # not written yet
            with open(os.path.join(self.dir, name), "wb") as f:
                f.write(data)

    def push(self, min_interval_s: float = 0.0) -> None:
        """Upload the files created or changed since the last push (URL only), unless the last upload
        was less than ``min_interval_s`` seconds ago (each changed file goes up whole: at one push a
        report, a long run's growing files would be uploaded again and again)."""
        if not is_url(self.path) or time.monotonic() - self._pushed_at < min_interval_s:
            return
        self._pushed_at = time.monotonic()
        for root, _, names in os.walk(self.dir):
            for name in names:
                local = os.path.join(root, name)
                stat = os.stat(local)
                if self._seen.get(local) != (stat.st_size, stat.st_mtime_ns):
                    target = join(self.path, os.path.relpath(local, self.dir).replace(os.sep, "/"))
                    fs, p = _fs(target)
                    with _errors(target):
                        fs.put_file(local, p)
                    self._seen[local] = (stat.st_size, stat.st_mtime_ns)

