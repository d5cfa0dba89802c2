"""Every file in cluster/ checked against what Ray's launcher and KubeRay expect.

Launcher YAMLs go through Ray's own `prepare_config` (defaults merged in, as `ray up` does) and
`validate_config` (Ray's JSON schema, ray/autoscaler/ray-schema.json, plus its cross-field rules).
The RayJob's cluster spec goes through Ray's KubeRay translation, which KubeRay's autoscaler runs on
every RayCluster. On top: the safety rules of this project (no dashboard on 0.0.0.0, token auth),
storage every node reaches (a bucket by default, a shared file system as an option), GPUs that run
the bf16 configs with an 8-GPU node type, and versions that match the Ray installed here.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
REPO_ROOT = CLUSTER.parent
LAUNCHER_FILES = sorted(p for p in CLUSTER.glob("*.yaml") if not p.name.startswith("kuberay"))
KUBERAY_FILES = sorted(CLUSTER.glob("kuberay*.yaml"))
PYTHON_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"
# GPUs with bf16 (Ampere or newer), and how many each instance type has. A T4 or V100 has no bf16.
AWS_GPUS = {"g5.2xlarge": 1, "p4d.24xlarge": 8}
GCP_BF16 = {"nvidia-l4", "nvidia-tesla-a100", "nvidia-a100-80gb", "nvidia-h100-80gb"}
CLOUD = {"aws.yaml": "s3://", "gcp.yaml": "gs://"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def project_packages() -> set[str]:
    """The top-level packages pyproject.toml installs (every one must reach the nodes)."""
    import tomllib

    include = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    return {name.rstrip("*") for name in include}


def assert_torch_pin(command: str, index: str = "cu126") -> None:
    """torch and torchvision at the versions installed here, from the CUDA 12.6 index: a build that runs
    on every driver from 525.60.13 on (the images' drivers are older than the 580 that PyPI's CUDA 13
    build needs: common-cu124 ships a 550)."""
    import torch
    import torchvision

    assert f"--index-url https://download.pytorch.org/whl/{index} " in command
    assert f'"torch=={torch.__version__.split("+")[0]}"' in command
    assert f'"torchvision=={torchvision.__version__.split("+")[0]}"' in command


def start_commands(config: dict) -> list[str]:
    return [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]


def test_every_yaml_is_covered():
    assert {p.name for p in CLUSTER.glob("*.yaml")} == {p.name for p in [*LAUNCHER_FILES, *KUBERAY_FILES]}
    assert {p.name for p in LAUNCHER_FILES} >= {"aws.yaml", "gcp.yaml", "local.yaml"}
    assert KUBERAY_FILES


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_yaml_passes_rays_validation(path):
    raw = load(path)
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)  # raises on any schema or cross-field error
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # The commands that start Ray come from this file, not from Ray's defaults (which use 0.0.0.0).
    assert prepared["head_start_ray_commands"] == raw["head_start_ray_commands"]
    assert prepared["worker_start_ray_commands"] == raw["worker_start_ray_commands"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_dashboard_is_loopback_only_and_token_protected(path):
    prepared = prepare_config(copy.deepcopy(load(path)))
    text = yaml.safe_dump(prepared)
    assert "0.0.0.0" not in text
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert re.search(r"ray start --head\b", head_start)
    assert "--dashboard-host=127.0.0.1" in head_start
    for command in start_commands(prepared):
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, command
    # The token reaches every node, and interactive shells on the nodes use it too.
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c for c in prepared["setup_commands"])


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_installs_this_project_at_the_submitted_version(path):
    raw = load(path)
    mounts = {remote: local for remote, local in raw["file_mounts"].items() if remote.startswith("~/eta-mine-pretrain")}
    # Local paths are relative to the repository root (where `ray up` is run) and exist there.
    for local in mounts.values():
        assert (REPO_ROOT / local).exists(), local
    packages = {Path(local).name for local in mounts.values()}
    assert {"pyproject.toml", "README.md", "configs", *project_packages()} <= packages
    setup = " ; ".join(raw["setup_commands"])
    assert re.search(r"pip install -q ~/eta-mine-pretrain\b", setup)
    # torch's CUDA build is chosen before the project's install (which then keeps it)
    (torch_install,) = [i for i, c in enumerate(raw["setup_commands"]) if "download.pytorch.org" in c]
    assert_torch_pin(raw["setup_commands"][torch_install])
    assert torch_install < next(i for i, c in enumerate(raw["setup_commands"]) if "~/eta-mine-pretrain" in c)
    # The cluster runs the same Ray as this machine (the launcher and job API require it).
    assert f'"ray[default,train]=={ray.__version__}"' in setup
    assert "**/__pycache__" in raw["rsync_exclude"]


@pytest.mark.parametrize("path", [p for p in LAUNCHER_FILES if "docker" in load(p)], ids=lambda p: p.name)
def test_cloud_image_matches_this_ray_and_python(path):
    image = load(path)["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-gpu"


@pytest.mark.parametrize("path", [p for p in LAUNCHER_FILES if load(p)["provider"]["type"] in ("aws", "gcp")],
                         ids=lambda p: p.name)
def test_cloud_node_types_cpu_head_and_gpu_workers(path):
    prepared = prepare_config(copy.deepcopy(load(path)))
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    assert head["max_workers"] == 0
    gpus = []
    for worker in workers.values():
        assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
        node = worker["node_config"]
        if prepared["provider"]["type"] == "aws":
            gpus.append(AWS_GPUS[node["InstanceType"]])  # a known bf16 GPU type
        else:
            (accelerator,) = node["guestAccelerators"]
            assert accelerator["acceleratorType"] in GCP_BF16
            assert accelerator["acceleratorCount"] == worker["resources"]["GPU"] >= 1
            assert node["scheduling"][0]["onHostMaintenance"] == "TERMINATE"
            gpus.append(worker["resources"]["GPU"])
    assert {1, 8} <= set(gpus)  # single-GPU workers and an 8-GPU node for the paper runs
    assert prepared["max_workers"] >= sum(w["max_workers"] for w in workers.values())


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_nodes_reach_the_same_storage(path):
    """Cloud clusters keep shards and runs in a bucket: every worker type has credentials for it, and
    no shared file system is mounted; mounting one stays an option, written out in comments. The
    local cluster requires its NFS export at /mnt/shared on every machine."""
    raw, text = load(path), path.read_text()
    if path.name in CLOUD:
        assert f"run.root={CLOUD[path.name]}BUCKET/runs" in text and f"data.shards={CLOUD[path.name]}BUCKET/" in text
        assert not any("/mnt/shared" in o for o in raw["docker"]["run_options"])
        assert raw["initialization_commands"] == []
        commented = [line for line in text.splitlines() if line.lstrip().startswith("#")]
        assert any("- -v /mnt/shared:/mnt/shared" in line for line in commented)
        assert any("mountpoint -q /mnt/shared || sudo mount" in line for line in commented)
        for name, node_type in raw["available_node_types"].items():
            if name == raw["head_node_type"]:
                continue  # Ray gives the head its own role with bucket access
            node = node_type["node_config"]
            if raw["provider"]["type"] == "aws":
                assert node["IamInstanceProfile"]["Arn"].endswith(":instance-profile/ray-autoscaler-v1")
            else:
                (account,) = node["serviceAccounts"]
                assert "https://www.googleapis.com/auth/cloud-platform" in account["scopes"]
    else:
        assert any("mountpoint -q /mnt/shared" in c and "exit 1" in c for c in raw["setup_commands"])


def test_local_provider_lists_machines():
    raw = load(CLUSTER / "local.yaml")
    assert raw["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    prepared = prepare_config(copy.deepcopy(raw))
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["max_workers"] == len(raw["provider"]["worker_ips"])


# ---------------------------------------------------------------- KubeRay


def rayjobs():
    for path in KUBERAY_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "RayJob":
                yield path, doc


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_files_hold_a_rayjob():
    assert [path.name for path, _ in rayjobs()]


@pytest.mark.parametrize("doc", [d for _, d in rayjobs()], ids=lambda d: d["metadata"]["name"])
def test_rayjob_shape_matches_kuberay(doc):
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("python -m cluster.resume --config /home/ray/eta-mine-pretrain/configs/")
    config = spec["entrypoint"].split()[4].removeprefix("/home/ray/eta-mine-pretrain/")
    assert (REPO_ROOT / config).is_file(), config
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert containers(head)[0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and containers(group)[0]["image"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    # What Ray's KubeRay autoscaler makes of this cluster spec (and checks against its schema).
    derived = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": doc["metadata"]["name"], "namespace": "default"}, "spec": cluster}
    )
    head_type = derived["available_node_types"][derived["head_node_type"]]
    assert head_type["resources"]["CPU"] == 0
    workers = [t for n, t in derived["available_node_types"].items() if n != derived["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)


@pytest.mark.parametrize("doc", [d for _, d in rayjobs()], ids=lambda d: d["metadata"]["name"])
def test_rayjob_is_safe_by_default(doc):
    cluster = doc["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert "0.0.0.0" not in yaml.safe_dump(doc)
    # KubeRay binds the dashboard to 0.0.0.0 unless dashboard-host is given: it must be given,
    # as the pod's own IP, from an env var the head container defines.
    host = head["rayStartParams"]["dashboard-host"]
    assert host not in ("0.0.0.0", "")
    var = host.lstrip("$").strip("()")
    env = {e["name"]: e for e in containers(head)[0]["env"]}
    assert env[var]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # KubeRay's default probes ask localhost:8265; ours must ask the address the dashboard uses.
    for probe in ("readinessProbe", "livenessProbe"):
        command = " ".join(containers(head)[0][probe]["exec"]["command"])
        assert f"${var}:8265" in command and "localhost:8265" not in command
    assert cluster["authOptions"]["mode"] == "token"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)


@pytest.mark.parametrize("path_doc", list(rayjobs()), ids=lambda pd: pd[1]["metadata"]["name"])
def test_rayjob_writes_to_storage_every_pod_reaches(path_doc):
    """Runs and shards in a bucket, every pod running as a service account of this file (its cloud
    identity reads the bucket); or, the option, on a ReadWriteMany volume every pod mounts."""
    path, doc = path_doc
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    cluster = doc["spec"]["rayClusterSpec"]
    shared = [re.search(rf"{key}=(\S+)", doc["spec"]["entrypoint"]).group(1) for key in (r"run\.root", r"data\.shards")]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert any(int(containers(g)[0]["resources"]["limits"].get("nvidia.com/gpu", 0)) == 8 for g in groups)
    if all(p.startswith(("s3://", "gs://")) for p in shared):
        for group in groups:
            assert group["template"]["spec"]["serviceAccountName"] in accounts
        return
    for group in groups:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        rwx_mounts = [
            m["mountPath"].rstrip("/") + "/"
            for m in containers(group)[0]["volumeMounts"]
            if claims[volumes[m["name"]]["persistentVolumeClaim"]["claimName"]]["spec"]["accessModes"]
            == ["ReadWriteMany"]
        ]
        for path in shared:
            assert any(path.startswith(m) for m in rwx_mounts), (
                f"{path} is not on a ReadWriteMany volume in group {group.get('groupName', 'head')}"
            )


def test_dockerfile_builds_from_the_same_ray_and_copies_existing_paths():
    lines = (CLUSTER / "Dockerfile").read_text().splitlines()
    (base,) = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert base == f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-gpu"
    images = {
        containers(g)[0]["image"]
        for _, d in rayjobs()
        for g in [d["spec"]["rayClusterSpec"]["headGroupSpec"], *d["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    }
    assert len(images) == 1  # head and workers run the same build
    copied = set()
    for line in lines:
        if line.startswith("COPY "):
            for source in [w for w in line.split()[1:-1] if not w.startswith("--")]:
                assert (REPO_ROOT / source).exists(), source
                copied.add(source)
    assert project_packages() <= copied
    (torch_arg,) = [line for line in lines if line.startswith("ARG TORCH_CUDA=")]
    text = "\n".join(lines).replace("${TORCH_CUDA}", torch_arg.split("=")[1])
    assert_torch_pin(text)
    assert text.index("download.pytorch.org") < text.index("pip install --no-cache-dir .")
