"""A Ray head started by hand for the tests: ``ray start --head --block`` on 127.0.0.1 with every file
under its own temporary directory, stopped by signalling that ``ray start`` process and then ending,
by pid, whatever still names that directory. A bare ``ray stop`` would also kill every other Ray
instance on the machine (other test runs included).

tests/cluster/conftest.py (``LocalHead``: dashboard and token authentication, for the job API) and
tests/support/fake_autoscaling.py (``FakeAutoscalingCluster``: Ray's fake autoscaler) start theirs
with :class:`RayStartHead`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_under(temp_dir: str) -> list[int]:
    """Pids (not this one) whose command line mentions ``temp_dir`` or whose working directory is inside it."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ours = temp_dir.encode() in (proc / "cmdline").read_bytes()
            ours = ours or os.readlink(proc / "cwd").startswith(temp_dir)
        except OSError:
            continue
        if ours and int(proc.name) != os.getpid():
            pids.append(int(proc.name))
    return pids


class RayStartHead:
    """Context manager around one ``ray start --head --block``. Subclasses set ``self.env`` and
    ``self.port`` in ``configure()`` (called with ``self.temp_dir`` made), name their extra
    ``ray start`` arguments in ``start_args()`` and say when the head is up in ``is_ready()``."""

    prefix = "rayh"  # short: Ray's Unix sockets go under the temporary directory (108 characters at most)
    startup_timeout_s = 60.0
    linger_s = 10.0  # how long processes under the directory may take to end on their own before SIGKILL
    proc: subprocess.Popen | None = None

    def configure(self) -> None:
        raise NotImplementedError

    def start_args(self) -> list[str]:
        return []

    def start_env(self) -> dict:
        return self.env

    def is_ready(self) -> bool:
        raise NotImplementedError

    def __enter__(self):
        self.temp_dir = tempfile.mkdtemp(prefix=self.prefix, dir="/tmp")
        self.configure()
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")
        self.proc = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1",
             f"--port={self.port}", "--num-gpus=0", "--disable-usage-stats", *self.start_args()],
            env=self.start_env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self.startup_log()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"Ray head not up after {self.startup_timeout_s:.0f} s: {self.startup_log()}")

    def check_alive(self) -> None:
        """Fails loudly if the head is gone (e.g. a `ray stop` elsewhere on this machine kills it)."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"the test's Ray head is not running (ray start exited with {code}): {self.startup_log()}")

    def startup_log(self) -> str:
        return (Path(self.temp_dir) / "ray-start.log").read_text()[-2000:]

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # A graceful stop first; `ray start` can take half a minute over it after a Ray Train
            # run, so then its whole process group (its own session, started above) is killed.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Anything still running from this head's own temporary directory is ours (the fake
        # autoscaler's added nodes, job drivers): end it by pid.
        deadline = time.monotonic() + self.linger_s
        while processes_under(self.temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in processes_under(self.temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
