"""Errors that retrying cannot fix end a run at once, with one line on the driver.

Ray Train V2 retries every worker-group failure ``max_failures`` times (its failure policy has no
notion of a non-retryable error). A broken checkpoint, a split with nothing decodable, a resume
with another number of workers, a full disk, a permission denied, or an object store that is gone
or unreachable (after its client's own retries) fail the same way on every try, so :func:`guard`
turns them into one line (:func:`classify`) and records it: in ``fatal.json`` in the run directory,
and in the Ray cluster's key-value store (which needs neither the disk nor the store that failed).
The workers end (or, when a rank could be left waiting in a collective, Ray restarts the group once
and the restarted group finds the record and returns at once instead of failing again). The driver
then raises :class:`RunFailed` with the recorded line; an error Ray raises before any worker could
record one (its own storage layer failing) is classified on the driver (:func:`find`). Checkpoints
are complete only once their checksum is written, so the earlier ones stay intact and resumable.
"""
from __future__ import annotations

import contextlib
import errno
import json
from typing import Iterator

import storage
from data_prep.shard_stream import UndecodableSplitError

FATAL_FILE = "fatal.json"


class FatalError(RuntimeError):
    """Raised inside a worker for a failure that every retry would repeat (one-line message).

    ``every_rank``: every rank meets it at the same point (e.g. reading the same checkpoint), so all
    can return without waiting for each other in a collective.
    """

    def __init__(self, message: str, every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank


class RunFailed(RuntimeError):
    """Raised on the driver: the run ended on a :class:`FatalError` (the message is its line)."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: an error re-raised by a DataLoader worker carries the
    original traceback, whose last line is ``module.Class: message``."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1] == type(exc).__name__ else last


# errno -> (what happened, what to do): the file-system errors no retry fixes
NO_RETRY = {
    errno.ENOSPC: ("no space left on the device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space there"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
    errno.EROFS: ("read-only file system", "mount it writable"),
}
KV_NAMESPACE = "pretrain-fatal"


def classify(exc: BaseException, run_dir) -> str | None:
    """The one line for an error that no retry fixes, None for any other (Ray retries those)."""
    if isinstance(exc, (FatalError, UndecodableSplitError)):
        return one_line(exc)
    resume = f"the checkpoints written before are intact; continue with python -m pretrain --resume {run_dir}"
    if isinstance(exc, storage.StorageError):
        return f"{one_line(exc)}; {resume} once the store is back"
    if storage.is_url(run_dir) and "AWS Error NETWORK_CONNECTION" in str(exc):
        # Arrow's S3 client (Ray Train's own uploads: the controller's snapshot, a checkpoint's files)
        # after its retries: the store does not answer
        return f"cannot reach the store of {run_dir}: {one_line(exc)}; {resume} once the store is back"
    if isinstance(exc, OSError) and exc.errno in NO_RETRY:
        what, todo = NO_RETRY[exc.errno]
        where = exc.filename or run_dir
        return (f"cannot write {where}: {what}; {todo} (or choose another run.root / run.storage_path): "
                f"{resume}")
    return None


def find(exc: BaseException, run_dir) -> str | None:
    """:func:`classify` of ``exc`` or of an error inside it: a Ray ``WorkerGroupError``'s worker
    failures, a ``ControllerError``'s failure, a ``RayTaskError``'s cause, ``__cause__``/``__context__``."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        line = classify(e, run_dir)
        if line is not None:
            return line
        todo += list(getattr(e, "worker_failures", {}).values())
        todo += [getattr(e, "controller_failure", None), getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _kv():
    """Ray's internal key-value store when this process is connected to Ray, else None."""
    try:
        import ray
        from ray.experimental import internal_kv
    except ImportError:
        return None
    return internal_kv if ray.is_initialized() and internal_kv._internal_kv_initialized() else None


def _key(run_dir) -> str:
    return f"fatal:{storage.resolve(run_dir)}"


def record(run_dir, rank: int, line: str) -> None:
    """Record ``line`` for the run (once: the first record stays), where it can be written: Ray's
    key-value store first (it needs neither the disk nor the store that failed), then ``fatal.json``."""
    kv = _kv()
    if kv is not None:
        kv._internal_kv_put(_key(run_dir), line, overwrite=False, namespace=KV_NAMESPACE)
    path = storage.join(run_dir, FATAL_FILE)
    with contextlib.suppress(OSError):  # the disk or store that failed may refuse this too
        if not storage.isfile(path):
            storage.write_text(path, json.dumps({"rank": rank, "message": line}))


def recorded(run_dir) -> str | None:
    """The fatal message recorded for ``run_dir`` (a local path or a URL), or None."""
    kv = _kv()
    if kv is not None:
        value = kv._internal_kv_get(_key(run_dir), namespace=KV_NAMESPACE)
        if value is not None:
            return value.decode()
    path = storage.join(run_dir, FATAL_FILE)
    try:
        return json.loads(storage.read_text(path))["message"] if storage.isfile(path) else None
    except (OSError, ValueError, KeyError):
        return None


def clear(run_dir) -> None:
    """Forget an earlier launch's record (call before Ray starts a new one: the file; after: both)."""
    kv = _kv()
    if kv is not None:
        kv._internal_kv_del(_key(run_dir), namespace=KV_NAMESPACE)
    storage.remove(storage.join(run_dir, FATAL_FILE))


@contextlib.contextmanager
def guard(run_dir, rank: int, world_size: int) -> Iterator[None]:
    """Record an error no retry fixes (:func:`classify`) raised in the body.

    When no other rank can be left waiting for this one (a single rank, or an error every rank
    meets) the body just ends: the run finishes at once. Otherwise the error is re-raised, short,
    so that Ray tears the worker group down; the restarted group finds the record and returns.
    """
    try:
        yield
    except Exception as exc:
        line = find(exc, run_dir)  # also inside it: torch.save reports a full disk as a RuntimeError over the OSError
        if line is None:
            raise  # Ray retries it from the last checkpoint
        record(run_dir, rank, line)
        if world_size > 1 and not getattr(exc, "every_rank", False):
            raise FatalError(line) from None
