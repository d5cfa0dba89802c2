"""Progress a person can read, on the driver: one line per report, read from ``metrics.jsonl``.

Rank 0 appends one JSON record per report to ``<run dir>/metrics.jsonl``; the driver follows that
file in a small thread (:class:`MetricsTail`) and hands each new record to its listeners: the
progress line (:class:`ProgressLine`) and, when configured, MLflow. Reading the file rather than
Ray's results keeps the driver independent of how (and how often) reports reach Ray::

    step 40/300 (13%) | loss -0.8143 | MI 0.814 | η 0.0105 | 684 images/s | data wait 22% | ETA 0:01:52

On a multi-node cluster the driver sees the file when the run directory is on shared storage or
at an ``s3://``/``gs://`` URL (rank 0 uploads it after every report).
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

import storage

Listener = Callable[[dict], None]

# Key of rank 0's wall clock (``time.time()``) in each ``metrics.jsonl`` record: when the report was
# written, which the driver's clock is not (it reads several records at once after a poll).
WALL_TIME = "time"

# The progress line's format, for whatever reads a run's output (the tests parse it with this).
LINE_RE = re.compile(
    r"^step (?P<step>\d+)/(?P<total>\d+) \((?P<percent>\d+)%\)"
    r"(?: \| loss (?P<loss>\S+))?(?: \| MI (?P<mi>\S+))?(?: \| η (?P<eta>\S+))?"
    r"(?: \| probe top-1 (?P<probe_top1>\S+)%)?(?: \| (?P<workers>\d+) workers)?"
    r" \| (?P<images_per_s>[\d.]+) images/s \| data wait (?P<data_wait>\d+)% \| ETA (?P<eta_time>.+)$"
)
# What the ETA field says until two reports have come (the first report's time includes start-up).
ETA_PENDING = "from the next report"


class MetricsTail(threading.Thread):
    """Follow a JSON-lines file from its current end, calling every listener with each new record.

    Only complete lines are read (rank 0 may be half-way through writing one). A listener that
    raises is reported once on stderr and dropped, so tracking trouble never stops training.
    """

    def __init__(self, path: str | Path, listeners: Sequence[Listener], poll_s: float = 0.5):
        super().__init__(name="metrics-tail", daemon=True)
        self.path = storage.as_path(path)
        self.listeners = list(listeners)
        self.poll_s = poll_s
        self._stop_event = threading.Event()
        self._offset = len(storage.read_bytes(self.path)) if storage.isfile(self.path) else 0  # a resumed run's old lines

    def run(self) -> None:
        while not self._stop_event.wait(self.poll_s):
            self.poll()

    def stop(self) -> None:
        """Stop following and deliver whatever arrived since the last poll."""
        self._stop_event.set()
        if self.is_alive():
            self.join()
        self.poll()

    def poll(self) -> None:
        try:
            if not storage.isfile(self.path):
                return
            with storage.open_read(self.path) as f:
                f.seek(self._offset)
                chunk = f.read()
        except storage.StorageError:
            return  # an object store hiccup: the next poll reads on from the same offset
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write: the next ones are still good
            for listener in list(self.listeners):
                try:
                    listener(record)
                except Exception as exc:  # noqa: BLE001 - a tracker must not stop the run
                    name = getattr(listener, "__qualname__", type(listener).__name__)
                    print(f"progress: {name} failed and is off for this run: {exc}",
                          file=sys.stderr, flush=True)
                    self.listeners.remove(listener)


@contextmanager
def follow(path: str | Path, listeners: Sequence[Listener], poll_s: float = 0.5) -> Iterator[MetricsTail]:
    """Run a :class:`MetricsTail` on ``path`` for the duration of the ``with`` block."""
    tail = MetricsTail(path, listeners, poll_s=poll_s)
    tail.start()
    try:
        yield tail
    finally:
        tail.stop()


class ProgressLine:
    """Prints one line per record: step/total, loss, MI, η, images/s, data wait, ETA.

    ``samples_per_image``: samples counted in ``samples_per_s`` per image (the permutations per
    image for jigsaw, 1 otherwise). The ETA comes from the records' own times (rank 0's clock,
    :data:`WALL_TIME`) from the first report on, so Ray's start-up does not inflate it and records
    that reach the driver together do not shrink it.
    """

    def __init__(self, total_steps: int, samples_per_image: int = 1, stream: TextIO | None = None):
        self.total = int(total_steps)
        self.samples_per_image = max(int(samples_per_image), 1)
        self.stream = stream
        self._first: tuple[float, int] | None = None

    def __call__(self, record: dict) -> None:
        if "step" not in record or "samples_per_s" not in record:
            return  # not a progress report (e.g. the non-finite marker)
        now, step = record.get(WALL_TIME, time.time()), int(record["step"])
        if self._first is None:
            self._first = (now, step)
            eta_s = None
        else:
            t0, s0 = self._first
            eta_s = (self.total - step) * (now - t0) / (step - s0) if step > s0 else None
        print(format_line(record, self.total, self.samples_per_image, eta_s),
              file=self.stream or sys.stdout, flush=True)


def format_line(record: dict, total: int, samples_per_image: int = 1, eta_s: float | None = None) -> str:
    """The progress line of one ``metrics.jsonl`` record (see :data:`LINE_RE`)."""
    step = int(record["step"])
    parts = [f"step {step}/{total} ({100 * step // max(total, 1)}%)"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4f}")
    if "mi" in record:
        parts.append(f"MI {record['mi']:.3f}")
    if "eta" in record:
        parts.append(f"η {record['eta']:.4f}")
    if "online_probe/top1" in record:  # train.online_probe
        parts.append(f"probe top-1 {record['online_probe/top1']:.1f}%")
    if "workers" in record:  # the worker count of the group that wrote it (elastic runs change it)
        parts.append(f"{int(record['workers'])} workers")
    parts.append(f"{record['samples_per_s'] / samples_per_image:.1f} images/s")
    parts.append(f"data wait {round(100 * record.get('data_wait_fraction', 0.0))}%")
    if step >= total:
        parts.append("ETA 0:00:00")
    elif eta_s is None or not math.isfinite(eta_s):
        parts.append(f"ETA {ETA_PENDING}")
    else:
        parts.append(f"ETA {timedelta(seconds=round(eta_s))}")
    return " | ".join(parts)


LOG_INTERVAL_S = 30.0  # a progress line this often when the output is a log, not a terminal


class _LogLines:
    """A stream for tqdm in a log: every refresh on a line of its own. (tqdm redraws with carriage
    returns and cursor moves, which in a log file run together into one unreadable line.)"""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").replace("\x1b[A", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable=None, *, total: float | None = None, desc: str = "", enabled: bool = True,
        stream: TextIO | None = None, **kwargs):
    """A tqdm progress bar that redraws on a terminal and, when the output is piped or logged,
    prints a plain line every :data:`LOG_INTERVAL_S` seconds (and at the end) instead."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():  # some captured streams have no isatty
        return tqdm(iterable, total=total, desc=desc, disable=not enabled, file=stream, dynamic_ncols=True, **kwargs)
    kwargs["leave"] = True  # the last line (100%) is the one a log reader wants
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, file=_LogLines(stream),
                mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, ncols=100, **kwargs)


def quiet_ray_report_logs() -> None:
    """Keep Ray Train from logging every report as ``Reporting training result N: TrainingReport(...)``.

    Ray Train V2 logs it at INFO under a logger named by its source file, which
    ``RunConfig(logging_config=LoggingConfig(log_level=...))`` does not reach (that filters
    ``ray.train.*`` names only). Called in each worker; the driver prints :class:`ProgressLine`.
    """
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: its own logging stays as it is
        return
    logger = getattr(context, "logger", None)
    if isinstance(logger, logging.Logger):
        logger.setLevel(logging.WARNING)
