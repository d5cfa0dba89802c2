"""A first run on a freshly started autoscaling cluster, against Ray's own fake autoscaler on 127.0.0.1
(tests/support/fake_autoscaling.py): the head has no CPUs and every worker type starts with zero
nodes, as in cluster/aws.yaml and gcp.yaml. The launcher must ask the autoscaler for its workers
(nothing else does before the trainer starts), decide ``train.use_gpu=null`` from the nodes that
came, and on a node whose GPU torch cannot use (here: a GPU Ray was told of, on a machine without
one) stop in one line that names the driver and the torch CUDA build.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.shards import synthetic_shards
from tests.support.fake_autoscaling import FakeAutoscalingCluster

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_TYPES = {"cpu_worker": {"resources": {"CPU": 1}, "max_workers": 1},
                "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 1}}


@pytest.fixture(scope="module")
def cluster():
    with FakeAutoscalingCluster(WORKER_TYPES) as c:
        yield c


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("autoscaling") / "shards", 32, {"train": 24}, shard_size=12)


def pretrain(cluster, shards: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["--config", str(REPO_ROOT / "configs" / "demo_infomax_eta.yaml"), f"data.shards={shards}",
            f"run.root={root}", "data.batch_size=8", "data.batches_per_epoch=2", "task.kwargs.hidden_dim=16",
            "task.kwargs.embed_dim=8", "train.num_workers=1", "train.steps=1", "train.report_every=1",
            "train.checkpoint_every=1", "train.image_every=0", "train.resource_wait_s=90", *extra]
    return subprocess.run([sys.executable, "-m", "pretrain", "--address", cluster.address, *args], cwd=REPO_ROOT,
                          env=cluster.env, capture_output=True, text=True, timeout=400)


def test_the_launcher_makes_the_autoscaler_add_a_node_and_decides_use_gpu_from_it(cluster, shards, tmp_path):
    done = pretrain(cluster, shards, tmp_path)  # train.use_gpu=null: the cpu_worker node is added, no GPU
    assert done.returncode == 0, done.stderr[-3000:]
    assert "latest checkpoint:" in done.stdout
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "checkpoint_000000001" / "checkpoint.pt").is_file()


def test_a_gpu_torch_cannot_use_stops_the_launch_in_one_line(cluster, shards, tmp_path):
    done = pretrain(cluster, shards, tmp_path, "train.use_gpu=true")  # the gpu_worker node is added
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("config error:")]
    assert "torch.cuda.is_available() is false" in line and "NVIDIA driver not found" in line
    assert f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none'}" in line


def grow(cluster) -> None:
    """Both worker types up (the tests above leave them so; alone, this asks for them)."""
    script = ("import time, ray; from pretrain.preflight import request_bundles; ray.init(address='auto'); "
              "have = ray.cluster_resources\n"
              "with request_bundles([{'CPU': 1}, {'CPU': 1, 'GPU': 1}], expire_after_s=120):\n"
              "    while have().get('CPU', 0) < 2 or have().get('GPU', 0) < 1: time.sleep(0.5)")
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env={**cluster.env, "RAY_ADDRESS": cluster.address},
                   check=True, timeout=240, capture_output=True)


def test_the_doctor_checks_every_node_and_all_reduces_across_two(cluster, shards, tmp_path):
    """Three nodes on 127.0.0.1: the head, a CPU node, and a node Ray was told has a GPU that torch cannot
    see. One problem line for that node; gloo all-reduce between the two workers; shards read, run.root
    written from every node. ``--json`` keeps the interface the GPU suite calls."""
    grow(cluster)
    out = tmp_path / "doctor.json"
    done = subprocess.run([sys.executable, "-m", "cluster.doctor", "--address", cluster.address, "--json", str(out),
                           f"data.shards={shards}", f"run.root={tmp_path / 'runs'}"],
                          cwd=REPO_ROOT, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report["nodes"]) == 3 and sorted(r["ray_gpus"] for r in report["nodes"]) == [0, 0, 1]
    assert all(r["shards_read"] and r["run_root_write"] for r in report["nodes"])
    assert report["all_reduce"]["ran"] and report["all_reduce"]["ok"] and report["all_reduce"]["backend"] == "gloo"
    problems = [p for p in report["problems"] if "GB free" not in p]  # a small test disk may add that line
    (gpu_line,) = problems
    assert "Ray gives this node GPUs but torch.cuda.is_available() is false" in gpu_line
    assert [x for x in done.stdout.splitlines() if x.startswith("problem: ")] == [f"problem: {p}" for p in report["problems"]]
    assert "all-reduce across nodes: gloo ok" in done.stdout
