"""Evaluation's GPU choice on a freshly started autoscaling cluster, against Ray's own fake autoscaler on
127.0.0.1 (tests/support/fake_autoscaling.py): the head has no CPUs and the one worker type, with a
GPU, starts with zero nodes, as on the cluster files. From the empty cluster extraction would run on
the CPU and never ask for a node; with ``device=null`` it must ask the autoscaler for its bundle, wait,
and decide from the node that came.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fake_autoscaling import FakeAutoscalingCluster

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_TYPES = {"gpu_worker": {"resources": {"CPU": 3, "GPU": 1}, "max_workers": 1}}

DECIDE = """
import json, ray
from eval.linear import extraction_nodes, extraction_task
ray.init(address="auto", log_to_driver=False)
before = extraction_task({"device": None, "batch_size": None, "num_workers": None}, ray.nodes())[1]
nodes = extraction_nodes(None, None, wait_s=240)
after = extraction_task({"device": None, "batch_size": None, "num_workers": None}, nodes)
print(json.dumps({"before": before, "after": after[1], "workers": after[0]["num_workers"],
                  "gpus": ray.cluster_resources().get("GPU", 0)}))
"""


def test_extraction_asks_the_autoscaler_for_a_gpu_node_and_takes_it():
    with FakeAutoscalingCluster(WORKER_TYPES, startup_timeout_s=180) as cluster:  # a loaded machine: slow to start
        done = subprocess.run([sys.executable, "-c", DECIDE], cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**cluster.env, "RAY_ADDRESS": cluster.address}, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "waiting up to 240 s (resource_wait_s) for a node for feature extraction" in done.stdout
    decided = json.loads(done.stdout.splitlines()[-1])
    assert decided["before"] == {"num_cpus": 1, "num_gpus": 0}  # what the empty cluster alone would give
    assert decided["gpus"] == 1  # the autoscaler added the GPU node
    # a GPU task, its loader processes fitted to the node that came (3 CPUs: the task's own and 2)
    assert decided["after"] == {"num_cpus": 3, "num_gpus": 1} and decided["workers"] == 2
