"""Ctrl-C (SIGINT) and SIGTERM to the driver: stop the run where it can be continued.

The driver runs ``trainer.fit()`` in a thread of its own and waits in the main thread, where Python
delivers signals (:meth:`SignalWatch.wait_for`). On the first signal it either stops at once (Ray shut
down, the workers with it) when less than ``train.interrupt_checkpoint_s`` of work would be lost, or
else asks the workers for one more checkpoint: it writes ``stop_requested.json`` in the run directory, and at their next report the
ranks agree on it (rank 0 reads the file, one all-reduce tells the others: :func:`stop_requested`),
write the checkpoint and return. A second signal stops at once. Either way the driver then raises
:class:`Interrupted`, and ``python -m pretrain`` prints one line (the step, the last checkpoint, the
command that continues the run) and exits with 128 + the signal number (130 for SIGINT, 143 for
SIGTERM). ``interrupted.json`` in the run directory records it, so that starting the same config
again can say the run exists and how to continue it (:func:`interrupted_runs`).
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from typing import Callable, Iterator

import storage

STOP_FILE = "stop_requested.json"
INTERRUPTED_FILE = "interrupted.json"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The driver was stopped by a signal; ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted ({signal.Signals(signum).name}) before the run started")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def raising_on_signals() -> Iterator[None]:
    """In the body SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (around the whole
    driver, so that a signal before the run starts ends it as cleanly as one during it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise Interrupted(signum)

    before = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


class SignalWatch:
    """SIGINT and SIGTERM handlers of the driver (main thread only), restored on exit.

    Outside :meth:`wait_for`, a signal raises :class:`Interrupted` where the main thread is (Ray's
    start-up, the resource wait). Inside, it is recorded and :meth:`wait_for` acts on it.
    ``ray.init`` installs a SIGTERM handler of its own: call :meth:`install` again after it.
    """

    def __init__(self):
        self.received: list[int] = []
        self._waiting = False
        self._raised = False  # once stopping, later signals do not cut the tear-down short
        self._before: dict[int, object] = {}

    def __enter__(self) -> "SignalWatch":
        if threading.current_thread() is threading.main_thread():
            self._before = {s: signal.getsignal(s) for s in SIGNALS}
            self.install()
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)

    def install(self) -> None:
        if self._before:  # only where __enter__ could install them (the main thread)
            for s in SIGNALS:
                signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        if not self._waiting and not self._raised:
            self._raised = True
            raise Interrupted(signum)

    def wait_for(self, fn: Callable[[], object], on_signal: Callable[[int, int], None]):
        """``fn()`` in a daemon thread, this (main) thread waiting; ``on_signal(signum, count)`` on
        each signal meanwhile, from this thread (it may raise to stop waiting). Returns ``fn()``'s
        value or raises its exception."""
        box: dict = {}

        def target():
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                box["error"] = exc

        thread = threading.Thread(target=target, name="trainer-fit", daemon=True)
        seen = len(self.received)
        self._waiting = True
        try:
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
                while seen < len(self.received):
                    seen += 1
                    try:
                        on_signal(self.received[seen - 1], seen)
                    except Interrupted:
                        self._raised = True
                        raise
        finally:
            self._waiting = False
        if "error" in box:
            raise box["error"]
        return box.get("value")


def request_stop(run_dir, signum: int) -> None:
    """Ask the workers for a checkpoint and an end at their next report."""
    storage.write_text(storage.join(run_dir, STOP_FILE), json.dumps({"signal": signum, "time": time.time()}))


def clear(run_dir) -> None:
    """Forget an earlier run's stop request and interruption (a resumed run starts afresh)."""
    storage.remove(storage.join(run_dir, STOP_FILE))
    storage.remove(storage.join(run_dir, INTERRUPTED_FILE))


def stop_requested(run_dir, device) -> bool:
    """Inside the workers, at a report (every rank calls it: one all-reduce): whether the driver
    asked for a last checkpoint. Rank 0 reads the run directory; the others learn it from rank 0."""
    import torch

    from pretrain import dist

    asked = dist.rank() == 0 and storage.isfile(storage.join(run_dir, STOP_FILE))
    flag = torch.tensor([1.0 if asked else 0.0], device=device)
    return bool(dist.all_reduce_max(flag).item() > 0)


def record(run_dir, signum: int, step: int, checkpoint) -> None:
    """Write ``interrupted.json`` (the signal, the step, the last checkpoint) in the run directory."""
    storage.write_text(storage.join(run_dir, INTERRUPTED_FILE), json.dumps(
        {"signal": signal.Signals(signum).name, "step": step, "checkpoint": checkpoint and str(checkpoint)}))


def interrupted_runs(home, name: str) -> list[tuple[str, dict]]:
    """``(run directory, its interrupted.json)`` of runs named ``name`` under ``home`` (a local
    folder; a URL is not searched) that were interrupted and not continued since, oldest first."""
    from pathlib import Path

    if storage.is_url(str(home)) or not Path(home).is_dir():
        return []
    found = []
    for run_dir in sorted(Path(home).glob(f"{name}-*")):
        marker = run_dir / INTERRUPTED_FILE
        if marker.is_file():
            with contextlib.suppress(OSError, ValueError):
                found.append((str(run_dir), json.loads(marker.read_text())))
    return found


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def continue_command(run_dir) -> str:
    return f"python -m pretrain --resume {run_dir}"

