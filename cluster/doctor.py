"""Check a running Ray cluster before spending GPU-hours on it: one task per node, one table, one line per problem.

    python -m cluster.doctor [--address ADDR] [--config configs/X.yaml] [--json PATH] [key=value ...]

On every live node a Ray task (given all of the node's GPUs, pinned to the node) reports: the GPUs Ray
gives it against ``torch.cuda.device_count()``, the NVIDIA driver against torch's CUDA build, the
compute capability (bf16 needs 8.0), whether torch has NCCL, the free disk where checkpoints go, read
access to ``data.shards`` and write access to ``run.root`` (a local path, or a bucket). With two nodes
or more, two of them all-reduce a tensor (NCCL when both have GPUs, else gloo): the network path
DDP takes between nodes. The run's settings come from a config as ``python -m pretrain`` reads it
(``--config`` and ``key=value``), or from ``data.shards=... run.root=...`` alone. Exit status 0: no
problem; 1: problems, each printed as one line saying what to change; 2: no cluster or a bad config.
``--json PATH`` also writes ``{"nodes": [...], "all_reduce": {...}, "problems": [...]}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta

from omegaconf import OmegaConf

import storage
from data_prep.manifest import read_manifest, shard_paths
from pretrain import gpu
from pretrain.config import ConfigError, PretrainConfig, absolute_paths, merge_config
from pretrain.run_dir import run_home

TASK_TIMEOUT_S = 120.0  # a node whose GPUs another job holds answers after it ends: say so instead
LOW_DISK_GB = 20.0  # a ResNet-50 jigsaw checkpoint is ~0.5 GB; keep room for several and the logs


def node_report(shards: str | None, split: str, run_root: str | None, checkpoints: str | None, bf16: bool,
                gpus: float) -> dict:
    """Runs on the node: :func:`pretrain.gpu.facts`, free disk, shard read and run-root write (None: not asked)."""
    import os
    import shutil
    from pathlib import Path

    import ray

    out = {"ip": ray.util.get_node_ip_address(), "ray_gpus": gpus, **gpu.facts(), "problems": []}
    out["problems"] += gpu.problems(out, gpus=gpus, bf16=bf16)
    out["free_disk_gb"] = None
    if checkpoints and not storage.is_url(checkpoints):
        existing = next(p for p in [Path(checkpoints), *Path(checkpoints).parents] if p.exists())
        out["free_disk_gb"] = round(shutil.disk_usage(existing).free / 1e9, 1)
        if out["free_disk_gb"] < LOW_DISK_GB:
            out["problems"].append(f"{out['free_disk_gb']:g} GB free under {checkpoints} (checkpoints go there): "
                                   f"free space, or set run.root/run.storage_path to a larger disk or a bucket")
    out["shards_read"] = None
    if shards:
        try:
            first = shard_paths(shards, split, read_manifest(shards))[0]
            with storage.open_read(first) as f:
                f.read(512)
            out["shards_read"] = True
        except Exception as exc:  # noqa: BLE001 - any failure to read is the finding, reported in one line
            out["shards_read"] = False
            out["problems"].append(f"cannot read data.shards={shards} split {split!r} here "
                                   f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                   f"put the shards where every node reads them (a bucket or the shared disk)")
    out["run_root_write"] = None
    if run_root:
        probe = storage.join(run_root, f".doctor-{out['ip']}-{os.getpid()}")
        try:
            storage.makedirs(run_root)
            storage.write_text(probe, "write check\n")
            storage.remove(probe)
            out["run_root_write"] = True
        except Exception as exc:  # noqa: BLE001
            out["run_root_write"] = False
            out["problems"].append(f"cannot write run.root={run_root} here "
                                   f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                   f"give every node write access (bucket credentials, or the shared disk mounted rw)")
    return out


def interface_of(ip: str) -> str | None:
    """The network interface holding the IPv4 address ``ip`` (Linux), for gloo's and NCCL's sockets."""
    import fcntl
    import socket
    import struct

    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:  # SIOCGIFADDR: the interface's address
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        if socket.inet_ntoa(packed[20:24]) == ip:
            return name
    return None


class Rank:
    """One side of the cross-node all-reduce (a Ray actor on a chosen node), on the node's Ray address."""

    def address(self) -> str:
        import socket

        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        return f"tcp://{ip}:{port}"

    def all_reduce(self, init_method: str, rank: int, backend: str) -> float:
        import os

        import ray
        import torch
        import torch.distributed as tdist

        # the interface of the address Ray uses between nodes (else gloo takes the host name's)
        name = interface_of(ray.util.get_node_ip_address())
        if name:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
            os.environ.setdefault("NCCL_SOCKET_IFNAME", name)
        tdist.init_process_group(backend, init_method=init_method, rank=rank, world_size=2,
                                 timeout=timedelta(seconds=60))
        try:
            t = torch.ones(4, device="cuda" if backend == "nccl" else "cpu")
            tdist.all_reduce(t)
            return float(t[0])
        finally:
            tdist.destroy_process_group()


def all_reduce_check(nodes: list[dict]) -> dict:
    """Two ranks on the first two nodes (GPU nodes first) all-reduce ones: the sum must be 2."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if len(nodes) < 2:
        return {"ran": False, "why": "one node"}
    pair = sorted(nodes, key=lambda n: -n["Resources"].get("GPU", 0))[:2]
    backend = "nccl" if all(n["Resources"].get("GPU", 0) >= 1 for n in pair) else "gloo"
    ranks = [ray.remote(num_cpus=0, num_gpus=1 if backend == "nccl" else 0)(Rank).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote() for n in pair]
    out = {"ran": True, "backend": backend, "nodes": [n["NodeManagerAddress"] for n in pair]}
    try:
        init = ray.get(ranks[0].address.remote(), timeout=TASK_TIMEOUT_S)
        sums = ray.get([r.all_reduce.remote(init, i, backend) for i, r in enumerate(ranks)], timeout=TASK_TIMEOUT_S)
        out["ok"] = sums == [2.0, 2.0]
        out["problem"] = None if out["ok"] else f"all-reduce between {out['nodes']} gave {sums}, not [2.0, 2.0]"
    except Exception as exc:  # noqa: BLE001
        out["ok"] = False
        out["problem"] = (f"{backend} all-reduce between nodes {' and '.join(out['nodes'])} failed "
                          f"({str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__}); "
                          f"open the nodes' ports to each other (the cluster's security group / firewall)")
    finally:
        for r in ranks:
            ray.kill(r)
    return out


def run_settings(config: str | None, overrides: list[str]):
    """``(data.shards or None, data.split, run.root, where checkpoints go, train.bf16)`` from the config."""
    cfg = absolute_paths(merge_config(PretrainConfig, config, overrides))
    shards = None if OmegaConf.is_missing(cfg.data, "shards") else cfg.data.shards
    root = storage.resolve(run_home(cfg.run))
    checkpoints = storage.resolve(cfg.run.storage_path) if cfg.run.storage_path else root
    return shards, cfg.data.split, root, checkpoints, bool(cfg.train.bf16)


def examine(shards, split, run_root, checkpoints, bf16) -> dict:
    """Run the node tasks and the all-reduce on the connected cluster; the whole table."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    task = ray.remote(num_cpus=0)(node_report)
    refs = [task.options(num_gpus=n["Resources"].get("GPU", 0),
                         scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
        shards, split, run_root, checkpoints, bf16, n["Resources"].get("GPU", 0)) for n in nodes]
    rows = []
    for node, ref in zip(nodes, refs):
        try:
            rows.append(ray.get(ref, timeout=TASK_TIMEOUT_S))
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            rows.append({"ip": node["NodeManagerAddress"], "ray_gpus": node["Resources"].get("GPU", 0),
                         "problems": [f"node {node['NodeManagerAddress']} did not answer in {TASK_TIMEOUT_S:g} s "
                                      f"(its GPUs busy with another job?); check it when it is free"]})
    reduce = all_reduce_check(nodes)
    problems = [f"{row['ip']}: {p}" for row in rows for p in row["problems"]]
    if reduce.get("problem"):
        problems.append(reduce["problem"])
    return {"nodes": rows, "all_reduce": reduce, "problems": problems}


COLUMNS = [("node", "ip"), ("Ray GPUs", "ray_gpus"), ("torch GPUs", "devices"), ("driver", "driver"),
           ("torch CUDA", "torch_cuda"), ("capability", "capability"), ("NCCL", "nccl"),
           ("free GB", "free_disk_gb"), ("shards", "shards_read"), ("run.root", "run_root_write")]


def format_table(report: dict) -> str:
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "ok" if v else "NO"
        if isinstance(v, list):
            return ".".join(map(str, v))
        return f"{v:g}" if isinstance(v, float) else str(v)

    rows = [[h for h, _ in COLUMNS]] + [[cell(r.get(k)) for _, k in COLUMNS] for r in report["nodes"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    r = report["all_reduce"]
    lines.append(f"all-reduce across nodes: {r['backend']} {'ok' if r['ok'] else 'FAILED'} ({' and '.join(r['nodes'])})"
                 if r["ran"] else f"all-reduce across nodes: not run ({r['why']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=None, help="Ray cluster to check (default: RAY_ADDRESS, else the local one)")
    p.add_argument("--config", default=None, help="the run's config (data.shards, run.root, train.bf16 are checked)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the table and problems as JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.shards=s3://B/shards run.root=s3://B/runs")
    args = p.parse_args(argv)
    try:
        settings = run_settings(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    import ray

    try:
        ray.init(address=args.address or "auto", log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError) as exc:
        print(f"error: no Ray cluster at {args.address or 'RAY_ADDRESS/auto'} ({str(exc).splitlines()[0]}); "
              f"give --address of a running cluster", file=sys.stderr)
        return 2
    report = examine(*settings)
    print(format_table(report))
    for line in report["problems"]:
        print(f"problem: {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
