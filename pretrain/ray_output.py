"""What Ray says during a run goes to the run's ``ray.log``, not to the user's terminal.

A run that works prints the run directory, Ray's start-up, the progress lines and the summary; a run
that fails prints one line. Ray's own messages (its token-authentication notice, the INFO lines of
``ray.init``, and the lines its actors and workers write, which Ray forwards to the driver: the
controller's, the placement-group cleaner's tracebacks when two local Rays share a machine) are for
a look afterwards: :func:`ray_to_log` writes them to ``ray.log`` while the run lasts. Ray's session
logs (``/tmp/ray/session_*/logs``, or ``ray.init(_temp_dir=...)``) keep everything as before.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator, TextIO

LOG_FILE = "ray.log"
RAY_PRINT_HANDLER = "ray_print_logs"  # the name ray.init gives its forwarder (ray/_private/worker.py)


def _to_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return type(handler) is not logging.FileHandler and stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)


def _dispatcher():
    """Ray's forwarder of worker output on the driver (None in another Ray layout)."""
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher
    except ImportError:
        return None
    return global_worker_stdstream_dispatcher


class RayLog:
    """The open ``ray.log`` of a run (see :func:`ray_to_log`)."""

    def __init__(self, f: TextIO):
        self.file = f
        self._removed: list = []

    def forward_workers(self) -> None:
        """After ``ray.init``: the lines Ray forwards from its actors and workers go to the file, each
        with the ``(name pid=N)`` prefix Ray prints them with, instead of to the console."""
        dispatcher = _dispatcher()
        if dispatcher is None:
            return
        f = self.file

        def write(data: dict) -> None:
            if data.get("pid") == "autoscaler":  # its status every few seconds: in Ray's session logs only
                return
            who = data.get("actor_name") or data.get("task_name") or ""
            prefix = f"({who} pid={data.get('pid')}) " if who else f"(pid={data.get('pid')}) "
            with contextlib.suppress(ValueError):  # the file closed under a late line
                f.writelines(prefix + line + "\n" for line in data.get("lines", []))

        with dispatcher._lock:
            self._removed += [pair for pair in dispatcher.handlers if pair[0] == RAY_PRINT_HANDLER]
        dispatcher.remove_handler(RAY_PRINT_HANDLER)
        dispatcher.add_handler(__name__, write)

    def restore(self) -> None:
        dispatcher = _dispatcher()
        if dispatcher is not None:
            dispatcher.remove_handler(__name__)
            for name, handler in self._removed:
                dispatcher.add_handler(name, handler)


@contextlib.contextmanager
def ray_to_log(path: str | Path) -> Iterator[RayLog]:
    """Send the driver's Ray log records (loggers ``ray`` and ``ray.*``) to ``path`` instead of the
    console for the body; :meth:`RayLog.forward_workers` does the same for what the workers say."""
    f = open(path, "a", buffering=1, encoding="utf-8")
    file_handler = logging.StreamHandler(f)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    swapped: list[tuple[logging.Logger, logging.Handler]] = []
    names = ["ray", *[n for n in logging.Logger.manager.loggerDict if n.startswith("ray.")]]
    for name in names:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if _to_console(h)]:
            logger.removeHandler(handler)
            swapped.append((logger, handler))
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(file_handler)
    log = RayLog(f)
    try:
        yield log
    finally:
        log.restore()
        ray_logger.removeHandler(file_handler)
        for logger, handler in swapped:
            logger.addHandler(handler)
        f.close()
