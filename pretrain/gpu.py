"""What a node's GPUs are to torch, and what stops a config running on them: one line each.

:func:`facts` runs where the GPUs are (a Ray task given them: the launcher's probe before the workers
start, ``python -m cluster.doctor`` on every node); :func:`problems` turns them into lines that say
what to change. Which torch CUDA build a driver runs is in ``docs/clusters.md``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

# Oldest Linux driver each CUDA major version's runtime runs on (CUDA's minor-version compatibility:
# a build for 12.x runs on any driver of the 12 line from 525.60.13 on; 13.x from 580.65.06 on).
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
# The torch 2.14 build for drivers older than 580 (docs/clusters.md).
LEGACY_INDEX = "https://download.pytorch.org/whl/cu126"
BF16_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores (a T4, 7.5, only emulates bf16)
DRIVER_FILE = Path("/proc/driver/nvidia/version")  # written by the NVIDIA kernel module


def driver_version(source: Path = DRIVER_FILE) -> str | None:
    """The NVIDIA kernel driver's version (``"550.54.15"``), None where there is none."""
    try:
        text = source.read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return m.group(1) if m else None


def facts() -> dict:
    """This process's view of its GPUs: torch's version and CUDA build, the driver, whether CUDA
    works, how many devices, the first one's name and compute capability, and NCCL."""
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    nccl = torch.distributed.is_available() and torch.distributed.is_nccl_available()
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,  # None: a CPU build
        "driver": driver_version(),
        "cuda_available": available,
        "devices": count,
        "name": torch.cuda.get_device_name(0) if count else None,
        "capability": list(torch.cuda.get_device_capability(0)) if count else None,
        "nccl": bool(nccl),
    }


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def cuda_problem(f: dict) -> str | None:
    """Why a process that was given a GPU finds none (torch.cuda.is_available() false), or None."""
    if f["cuda_available"]:
        return None
    driver, build = f["driver"], f["torch_cuda"]
    met = f"NVIDIA driver {driver or 'not found'}, torch {f['torch']} built for CUDA {build or 'none (a CPU build)'}"
    if build is None:
        fix = f"install a CUDA build of torch (pip install --index-url {LEGACY_INDEX} torch)"
    elif driver is None:
        fix = "install the NVIDIA driver on the node (or use an image with one)"
    else:
        need = MIN_DRIVER.get(_version(build)[0])
        if need is not None and _version(driver) < _version(need):
            fix = (f"CUDA {build} needs driver >= {need}: install torch from {LEGACY_INDEX} "
                   f"(driver >= {MIN_DRIVER[12]}) or update the driver")
        else:
            fix = "check that the container sees the GPUs (nvidia-smi on the node; docker --gpus all)"
    return f"Ray gives this node GPUs but torch.cuda.is_available() is false: {met}; {fix}"


def bf16_problem(f: dict) -> str | None:
    """Why ``train.bf16=true`` should not run on this GPU (compute capability below 8.0), or None."""
    cap = f["capability"]
    if cap is None or tuple(cap) >= BF16_CAPABILITY:
        return None
    return (f"train.bf16=true needs compute capability >= 8.0 (Ampere or newer), {f['name']} is "
            f"{cap[0]}.{cap[1]} and only emulates bf16; set train.bf16=false or use A100/A10G/L4/H100 nodes")


def problems(f: dict, *, gpus: float, bf16: bool) -> list[str]:
    """One line per thing to change before a run with ``bf16`` uses this node, given ``gpus`` by Ray."""
    found = []
    if gpus:
        found.append(cuda_problem(f))
        if f["cuda_available"] and f["devices"] < gpus:
            found.append(f"Ray gives this node {gpus:g} GPU(s) but torch sees {f['devices']}: "
                         f"check CUDA_VISIBLE_DEVICES and the node's --num-gpus")
        if f["cuda_available"] and not f["nccl"]:
            found.append(f"torch {f['torch']} has no NCCL: multi-GPU runs need a CUDA build of torch with NCCL")
    if bf16:
        found.append(bf16_problem(f))
    return [p for p in found if p]
