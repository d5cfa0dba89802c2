"""Ray's fake autoscaling cluster on 127.0.0.1: a head with no CPUs whose autoscaler adds worker nodes
(raylets on this machine) when work or ``request_resources`` asks for them.

``ray.cluster_utils.AutoscalingCluster`` does not run from the installed wheel (it reads a YAML the
wheel lacks) and its start and shutdown call ``ray stop --force``, which ends every Ray on the
machine. This starts the same thing by hand: ``RAY_FAKE_CLUSTER=1 ray start --head --block
--autoscaling-config=F`` with a ``fake_multinode`` provider, every file under its own temporary
directory; stopping signals the processes whose command line names that directory (the added nodes'
raylets included), never another Ray on the machine.
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
from pathlib import Path

import yaml

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_under(temp_dir: str) -> list[int]:
    """Pids (not this one) whose command line mentions ``temp_dir``."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if temp_dir.encode() in (proc / "cmdline").read_bytes() and int(proc.name) != os.getpid():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


class FakeAutoscalingCluster:
    """Context manager: ``.address`` (GCS, for ``--address``) and ``.env`` (for clients).

    ``worker_types``: ``{name: {"resources": {...}, "max_workers": n}}``; every type starts with
    zero nodes (``min_workers: 0``), as the cloud cluster files do.
    """

    def __init__(self, worker_types: dict, startup_timeout_s: float = 60.0):
        self.worker_types = worker_types
        self.startup_timeout_s = startup_timeout_s

    def __enter__(self) -> "FakeAutoscalingCluster":
        self.temp_dir = tempfile.mkdtemp(prefix="rayfa", dir="/tmp")  # short: Ray's socket paths go under it
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        config = {
            "cluster_name": "fake", "max_workers": sum(t["max_workers"] for t in self.worker_types.values()),
            "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
            "provider": {"type": "fake_multinode", "gcs_address": self.address, "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
                **{name: {"resources": t["resources"], "node_config": {}, "min_workers": 0,
                          "max_workers": t["max_workers"]} for name, t in self.worker_types.items()}},
            "head_node_type": "ray.head.default",
            "auth": {"ssh_user": "nobody"}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        }
        config_file = Path(self.temp_dir) / "autoscaling.yaml"
        config_file.write_text(yaml.safe_dump(config))
        self.env = dict(os.environ, RAY_AUTH_TOKEN=os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32),
                        RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
                        # every node Ray starts here takes 127.0.0.1 (the fake provider's nodes too)
                        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            self.env.pop(var, None)
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")
        self.proc = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false",
             f"--autoscaling-config={config_file}", "--disable-usage-stats"],
            env=dict(self.env, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1"),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
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
            if "Ray runtime started" in self.startup_log():
                return
            time.sleep(0.5)
        raise TimeoutError(f"fake autoscaling head not up after {self.startup_timeout_s:.0f} s: {self.startup_log()}")

    def startup_log(self) -> str:
        return (Path(self.temp_dir) / "ray-start.log").read_text()[-2000:]

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # a graceful stop first, then its process group (its own session)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # the added nodes' processes were started by the autoscaler: end what still names the directory
        for pid in processes_under(self.temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
