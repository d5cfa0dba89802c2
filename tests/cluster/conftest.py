"""A real single-node Ray cluster on 127.0.0.1 for tests (fixture `head`, one for the tests/cluster package),
and a way to run the submit CLI against it.

The head is `ray start --head --block` (tests/support/ray_head.py: every file under its own
temporary directory, stopped without touching another Ray on the machine) with free ports, the
dashboard on 127.0.0.1 and token authentication on, like the cluster files.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.ray_head import RayStartHead, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class LocalHead(RayStartHead):
    """Context manager: a running head; `.address`, `.env` (for clients), `.cli(...)`."""

    prefix = "rayc"
    startup_timeout_s = 120.0

    def __init__(self, num_cpus: int = 2):
        self.num_cpus = num_cpus
        self.token = secrets.token_hex(16)

    def configure(self) -> None:
        self.port = free_port()
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

    def start_args(self) -> list[str]:
        return [
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--num-cpus={self.num_cpus}",
        ]

    def is_ready(self) -> bool:
        """The job API answers (with the token)."""
        request = urllib.request.Request(
            f"{self.address}/api/version", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

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
