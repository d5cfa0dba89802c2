"""Errors that retrying cannot fix end a run at once, with one line on the driver.

Ray Train V2 retries every worker-group failure ``max_failures`` times (its failure policy has no
notion of a non-retryable error). A broken checkpoint, a split with nothing decodable or a resume
with another number of workers fails the same way on every try, so the loop raises
:class:`FatalError`; :func:`guard` records its one-line message in ``fatal.json`` in the run
directory; the workers end (or, when a rank could be left waiting in a collective, Ray restarts the
group once and the restarted group finds the record and returns at once instead of failing again).
The driver then raises :class:`RunFailed` with the recorded line.
"""
from __future__ import annotations

import contextlib
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


def recorded(run_dir) -> str | None:
    """The fatal message recorded in ``run_dir`` (a local path or a URL), or None."""
    path = storage.join(run_dir, FATAL_FILE)
    try:
        return json.loads(storage.read_text(path))["message"] if storage.isfile(path) else None
    except (OSError, ValueError, KeyError):
        return None


def clear(run_dir) -> None:
    storage.remove(storage.join(run_dir, FATAL_FILE))


@contextlib.contextmanager
def guard(run_dir, rank: int, world_size: int) -> Iterator[None]:
    """Record a :class:`FatalError` (or an undecodable split) raised in the body.

    When no other rank can be left waiting for this one (a single rank, or an error every rank
    meets) the body just ends: the run finishes at once. Otherwise the error is re-raised, short,
    so that Ray tears the worker group down; the restarted group finds the record and returns.
    """
    try:
        yield
    except (FatalError, UndecodableSplitError) as exc:
        line = one_line(exc)
        if recorded(run_dir) is None:
            storage.write_text(storage.join(run_dir, FATAL_FILE), json.dumps({"rank": rank, "message": line}))
        if world_size > 1 and not getattr(exc, "every_rank", False):
            raise FatalError(line) from None
