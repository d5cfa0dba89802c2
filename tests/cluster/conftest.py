"""A real single-node Ray cluster on 127.0.0.1 for tests (fixture `head`, one for the tests/cluster package),
and a way to run the submit CLI against it.

The head is `ray start --head --block` with every file under its own temporary directory, free
ports, the dashboard on 127.0.0.1 and token authentication on, like the cluster files. It is
stopped by signalling that `ray start` process, which takes down the processes it started: a bare
`ray stop` would also kill every other Ray instance on the machine (other test runs included).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_under(temp_dir: str) -> list[int]:
    """Pids whose command line mentions `temp_dir` or whose working directory is inside it."""
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


class LocalHead:
    """Context manager: a running head; `.address`, `.env` (for clients), `.cli(...)`."""

    def __init__(self, num_cpus: int = 2, startup_timeout_s: float = 120.0):
        self.num_cpus = num_cpus
        self.startup_timeout_s = startup_timeout_s
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LocalHead":
        # Short path: Ray's Unix sockets live under it and must stay below 108 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        # Job drivers run `python` from PATH: make it this interpreter.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = dict(
            os.environ,
            PATH=path,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1",
            RAY_USAGE_STATS_ENABLED="0",
            # Single-node mode: Ray would otherwise replace 127.0.0.1 by the machine's network
            # address for the GCS, raylet and object manager; this keeps all of it on loopback.
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        )
        for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(var, None)
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")
        self.proc = subprocess.Popen(
            [
                str(RAY), "start", "--head", "--block",
                f"--temp-dir={self.temp_dir}",
                "--node-ip-address=127.0.0.1",
                f"--port={free_port()}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                f"--num-cpus={self.num_cpus}",
                "--num-gpus=0",
                "--disable-usage-stats",
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        request = urllib.request.Request(
            f"{self.address}/api/version", headers={"Authorization": f"Bearer {self.token}"}
        )
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self.startup_log()}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Ray head not up after {self.startup_timeout_s:.0f} s: {self.startup_log()}")

    def check_alive(self) -> None:
        """Fails loudly if the head is gone (e.g. a `ray stop` elsewhere on this machine kills it)."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"the test's Ray head is not running (ray start exited with {code}): {self.startup_log()}")

    def startup_log(self) -> str:
        return (Path(self.temp_dir) / "ray-start.log").read_text()[-2000:]

    def cli(self, *args: str, env: dict | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Runs `python -m cluster.submit --address <head> ARGS` and returns the finished process."""
        self.check_alive()
        result = subprocess.run(
            [sys.executable, "-m", "cluster.submit", "--address", self.address, *args],
            cwd=REPO_ROOT,
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            self.check_alive()  # a failure caused by the head dying is reported as that
        return result

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
        # Anything still running from this head's own temporary directory is ours: end it by pid.
        deadline = time.monotonic() + 10
        while _processes_under(self.temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in _processes_under(self.temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="package")
def head():
    """A running head for the tests of tests/cluster (submit and end-to-end jobs share it: starting
    and stopping a head costs seconds), stopped with everything it started after the last of them."""
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None:
        pytest.fail(f"the job API needs ray[default] ({missing}): add 'ray[default,train]' to pyproject dependencies")
    with LocalHead() as running:
        yield running


@pytest.fixture
def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return free_port()
