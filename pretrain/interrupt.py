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

SIGTERM to a worker process (what a spot reclaim sends first) is a preemption notice: the handler
:func:`install_worker_sigterm` puts on the worker's main thread (before the training function starts)
records it; the loop adds it to the step's loss all-reduce (``train.preemption_notice``), so every rank
reports at that step, learns at the report's :func:`stop_requested` that a worker got SIGTERM, writes
the checkpoint and leaves (:func:`leave`): a fixed-size run ends as if the driver had been sent SIGTERM
(the one line, exit code 143); in an elastic run the signalled worker then exits through Ray's own
SIGTERM handler and Ray restarts the group from that checkpoint on the workers left. A second SIGTERM
goes to Ray's handler at once. ``preempted.json`` in the run directory records the last one.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import storage

STOP_FILE = "stop_requested.json"
INTERRUPTED_FILE = "interrupted.json"
PREEMPTED_FILE = "preempted.json"
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
    """Forget an earlier run's stop request, interruption and preemption (a resumed run starts afresh)."""
    for name in (STOP_FILE, INTERRUPTED_FILE, PREEMPTED_FILE):
        storage.remove(storage.join(run_dir, name))


@dataclass(frozen=True)
class Stop:
    """Why the group stops at this report: ``driver`` (it asked, :func:`request_stop`) and/or
    ``sigterm`` (a worker of the group got SIGTERM); false when neither."""

    driver: bool = False
    sigterm: bool = False

    def __bool__(self) -> bool:
        return self.driver or self.sigterm


def stop_requested(run_dir, device) -> Stop:
    """Inside the workers, at a report (every rank calls it: one all-reduce): whether the driver
    asked for a last checkpoint (rank 0 reads the run directory; the others learn it from rank 0) and
    whether any worker got SIGTERM (:func:`worker_sigterm`)."""
    import torch

    from pretrain import dist

    asked = dist.rank() == 0 and storage.isfile(storage.join(run_dir, STOP_FILE))
    flags = torch.tensor([float(asked), float(worker_sigterm())], device=device)
    driver, sigterm = (dist.all_reduce_max(flags) > 0).tolist()
    return Stop(driver=driver, sigterm=sigterm)


# ---- SIGTERM to a worker process -----------------------------------------------------------------
_sigterm_at: list[float] = []  # time.time() of this process's first SIGTERM
_ray_handler: list = []  # the handler ours replaced (Ray's: the worker exits)
EXIT_WAIT_S = 60.0  # a worker's own second SIGTERM ends it at Ray's next signal check, well within this


def install_worker_sigterm() -> None:
    """In a Ray Train worker, on its main thread (an actor method of the non-threaded worker actor, run
    before the training function starts): SIGTERM becomes a preemption notice (:func:`worker_sigterm`);
    a second one goes to the handler it replaces (Ray's, which makes the worker exit)."""
    if signal.getsignal(signal.SIGTERM) is _on_worker_sigterm:
        return
    _ray_handler[:] = [signal.getsignal(signal.SIGTERM)]
    signal.signal(signal.SIGTERM, _on_worker_sigterm)


def _on_worker_sigterm(signum, frame) -> None:
    if not _sigterm_at:
        _sigterm_at.append(time.time())
        print(f"SIGTERM: this worker (pid {os.getpid()}) asks its group for a checkpoint at the next report, "
              f"then leaves", file=sys.stderr, flush=True)
        return
    before = _ray_handler[0] if _ray_handler else signal.SIG_DFL
    if callable(before):
        before(signum, frame)
    else:  # SIG_DFL: end as the default action would
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def worker_sigterm() -> bool:
    """Whether this worker process got SIGTERM (a host read)."""
    return bool(_sigterm_at)


def leave(run_dir, stop: Stop, step: int, checkpoint: str, elastic: bool) -> None:
    """After the checkpoint of a stop at ``step`` (every rank calls it, then returns). The rank that got
    SIGTERM records it in ``preempted.json`` (the step, the checkpoint, the seconds from its SIGTERM to
    the committed checkpoint); in an elastic run it then exits through Ray's handler (Ray restarts the
    group from ``checkpoint`` on the workers left), so this does not return there."""
    if not (stop.sigterm and worker_sigterm()):
        return
    committed = time.time()
    from pretrain import dist

    storage.write_text(storage.join(run_dir, PREEMPTED_FILE), json.dumps(
        {"signal": "SIGTERM", "rank": dist.rank(), "pid": os.getpid(), "step": step, "checkpoint": checkpoint,
         "sigterm_at": _sigterm_at[0], "committed_at": committed,
         "seconds_to_checkpoint": round(committed - _sigterm_at[0], 3), "elastic": elastic}))
    if not elastic:
        return
    # the controller must have this rank's report (it carries the checkpoint) before the worker goes
    from ray.train.v2._internal.execution.context import get_train_context

    get_train_context().execution_context.result_queue.join()
    os.kill(os.getpid(), signal.SIGTERM)  # the second: Ray's handler, on the main thread
    time.sleep(EXIT_WAIT_S)
    raise RuntimeError(f"SIGTERM did not end worker process {os.getpid()} in {EXIT_WAIT_S:.0f} s")


def preempted(run_dir) -> dict | None:
    """``preempted.json`` of the run directory (the last worker SIGTERM acted on), or None."""
    path = storage.join(run_dir, PREEMPTED_FILE)
    return json.loads(storage.read_text(path)) if storage.isfile(path) else None


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

