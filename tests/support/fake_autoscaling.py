"""Ray's fake autoscaling cluster on 127.0.0.1: a head with no CPUs whose autoscaler adds worker nodes
(raylets on this machine) when work or ``request_resources`` asks for them.

``ray.cluster_utils.AutoscalingCluster`` does not run from the installed wheel (it reads a YAML the
wheel lacks) and its start and shutdown call ``ray stop --force``, which ends every Ray on the
machine. This starts the same thing by hand: ``RAY_FAKE_CLUSTER=1 ray start --head --block
--autoscaling-config=F`` with a ``fake_multinode`` provider, every file under its own temporary
directory (tests/support/ray_head.py); stopping signals the processes whose command line names that
directory (the added nodes' raylets included), never another Ray on the machine.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import yaml

from tests.support.ray_head import RayStartHead, free_port


class FakeAutoscalingCluster(RayStartHead):
    """Context manager: ``.address`` (GCS, for ``--address``) and ``.env`` (for clients).

    ``worker_types``: ``{name: {"resources": {...}, "max_workers": n}}``; every type starts with
    zero nodes (``min_workers: 0``), as the cloud cluster files do.
    """

    prefix = "rayfa"
    linger_s = 0.0  # the added nodes' raylets do not end with the head: they are killed at once

    def __init__(self, worker_types: dict, startup_timeout_s: float = 60.0):
        self.worker_types = worker_types
        self.startup_timeout_s = startup_timeout_s

    def configure(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
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
        self.config_file = Path(self.temp_dir) / "autoscaling.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.env = dict(os.environ, RAY_AUTH_TOKEN=os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32),
                        RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
                        # every node Ray starts here takes 127.0.0.1 (the fake provider's nodes too)
                        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            self.env.pop(var, None)

    def start_args(self) -> list[str]:
        return ["--num-cpus=0", "--include-dashboard=false", f"--autoscaling-config={self.config_file}"]

    def start_env(self) -> dict:
        # the autoscaler's update interval is an integer number of seconds: 1 is its shortest
        return dict(self.env, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")

    def is_ready(self) -> bool:
        return "Ray runtime started" in self.startup_log()
