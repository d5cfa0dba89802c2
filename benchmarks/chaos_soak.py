"""Chaos soak of an elastic run: faults at seeded random times against a two-node Ray on 127.0.0.1.

A head and a second node (2 CPUs each, processes of this script, their files in one temporary folder,
stopped by this script: their processes by id, never ``ray stop``) run an InfoMax η-MINE run with
V = 4 virtual shards, ``train.num_workers=4`` and ``train.min_workers=1``. Once it reports, the soak
injects, in a seeded order and at seeded random gaps (each after the run has reported again since the
last fault): SIGKILL of a worker, SIGTERM of a worker, SIGKILL of the second node's raylet (its workers
vanish) followed, after another gap, by a restart of that node; last, SIGKILL of the driver and
``python -m pretrain --resume RUN_DIR train.num_workers=2`` (another worker count). Then the same
config runs uninterrupted at a fixed 4 workers. It prints the faults, the worker count over time (from
the run's reports) and max |Δw| / max |w| between the two final checkpoints, and writes them to
``--out`` (JSON).

    python benchmarks/chaos_soak.py --out benchmarks/results/chaos_soak/soak.json   # ~10 minutes of faults
    python benchmarks/chaos_soak.py --quick                                         # ~60 s of faults
"""
from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RAY = Path(sys.executable).with_name("ray")
START_ATTEMPTS = 6
# (steps, gaps between faults in s): ~60 s of faults, or ~10 minutes
SETTINGS = {"quick": (160, (5, 15)), "full": (2400, (40, 100))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def named(procs, word: str) -> list[int]:
    """Pids of ``procs`` whose command line holds ``word`` (zombies and vanished ones skipped)."""
    import psutil

    found = []
    for p in procs:
        try:
            if word in " ".join(p.cmdline()):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


class Node:
    """One Ray node on 127.0.0.1 with 2 CPUs, its processes children of this one (the head when
    ``gcs_address`` is None). Started as Ray's own multi-node tests start theirs (``ray._private.node``):
    ``ray start`` of a second node swaps 127.0.0.1 for the host's address."""

    def __init__(self, temp_dir: str, gcs_address: str | None = None):
        from ray._private import ray_constants
        from ray._private.node import Node as RayNode
        from ray._private.parameter import RayParams

        params = dict(node_ip_address="127.0.0.1", num_cpus=2, num_gpus=0, temp_dir=temp_dir, include_dashboard=False,
                      object_store_memory=150 * 1024 ** 2, min_worker_port=0, max_worker_port=0)
        if gcs_address is not None:
            params.update(gcs_address=gcs_address, include_log_monitor=False, node_manager_port=0)
        for attempt in range(START_ATTEMPTS):  # a loaded machine can miss Ray's 30 s wait for the raylet
            before = {p.pid for p in descendants(os.getpid())}
            if gcs_address is None:
                params.update(gcs_server_port=free_port())
            try:
                self.node = RayNode(RayParams(**params), head=gcs_address is None, shutdown_at_exit=False,
                                    spawn_reaper=False)
                self.raylet = self.node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
                self.stopped = False
                return
            except Exception:  # noqa: BLE001 - Ray raises a bare Exception; the attempt's processes go first
                for p in descendants(os.getpid()):
                    if p.pid not in before:
                        with_suppressed(os.kill, p.pid, signal.SIGKILL)
                if attempt == START_ATTEMPTS - 1:
                    raise

    @property
    def gcs_address(self) -> str:
        return self.node.gcs_address

    def train_workers(self) -> list[int]:
        return [] if self.stopped else named(descendants(self.raylet), "ray::RayTrainWorker")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        workers = descendants(self.raylet)
        self.node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
        for p in workers:  # what the raylet's end left
            with_suppressed(os.kill, p.pid, signal.SIGKILL)


def with_suppressed(fn, *args) -> None:
    try:
        fn(*args)
    except (ProcessLookupError, PermissionError):
        pass


def run_args(shards: Path, root: Path, steps: int) -> list[str]:
    return ["--config", "configs/demo_infomax_eta.yaml", f"data.shards={shards}", f"run.root={root}", "run.name=soak",
            "task.kind=infomax", "task.estimator=eta-mine", "task.kwargs.hidden_dim=16", "task.kwargs.embed_dim=8",
            "model.encoder=dcgan", "model.depth=2", "data.batch_size=4", "data.batches_per_epoch=10",
            "data.virtual_shards=4", "train.num_workers=4", f"train.steps={steps}", "train.report_every=5",
            "train.checkpoint_every=20",
            "train.threads_per_worker=1", "data.loader_workers=0", "train.max_failures=20", "train.resource_wait_s=600"]


class Driver:
    def __init__(self, env: dict, args: list[str], log: Path):
        self.log = log
        with open(log, "a") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pretrain", *args], cwd=REPO, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def reports(run_root: Path) -> list[dict]:
    files = list(run_root.glob("soak-*/metrics.jsonl"))
    if not files:
        return []
    out = []
    for line in files[0].read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            continue
    return out


def relative_gap(a: dict, b: dict) -> float:
    """max |Δw| / max |w| over the floating tensors (weights, η, batch-norm statistics) of two states."""
    keys = [k for k in a if a[k].is_floating_point()]
    gap = max((a[k].double() - b[k].double()).abs().max().item() for k in keys)
    return gap / max(a[k].double().abs().max().item() for k in keys)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~60 s of faults (the test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="the figures as JSON")
    parser.add_argument("--work", type=Path, help="where the shards, runs and Ray's files go (default: a temporary "
                                                  "folder, removed at the end)")
    args = parser.parse_args(argv)
    steps, gaps = SETTINGS["quick" if args.quick else "full"]
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="soak", dir=args.work or "/tmp"))  # short: Ray's socket paths
    from tests.support.shards import folder_shards

    shards = folder_shards(work / "data", 40, n_classes=4, size=32, shard_size=10)
    env = dict(os.environ, RAY_AUTH_TOKEN=os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32),
               RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
               PYTHONPATH=str(REPO), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    t0 = time.time()
    faults: list[dict] = []

    def note(kind: str, **detail) -> None:
        faults.append({"t_s": round(time.time() - t0, 1), "kind": kind, **detail})
        print(f"[{time.time() - t0:7.1f} s] {kind} {detail or ''}", flush=True)

    os.environ.update({k: env[k] for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED",
                                           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")})  # the nodes started here
    head = Node(str(work / "ray"))
    env["RAY_ADDRESS"] = head.gcs_address
    second = Node(str(work / "ray"), head.gcs_address)
    nodes = [head, second]
    try:
        chaos_root = work / "chaos"
        driver = Driver(env, [*run_args(shards, chaos_root, steps), "train.min_workers=1",
                              f"train.resize_every_s={10 if args.quick else 30}"], work / "driver.log")

        def wait_for_progress(after_step: int, timeout: float = 900) -> int:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                done = [r["step"] for r in reports(chaos_root)]
                if done and max(done) > after_step:
                    return max(done)
                if driver.proc.poll() is not None:
                    if driver.proc.returncode == 0:
                        return max(done)
                    raise RuntimeError(f"the driver exited ({driver.proc.returncode}): "
                                       f"{driver.log.read_text()[-3000:]}")
                time.sleep(0.5)
            raise TimeoutError(f"no report after step {after_step} in {timeout:.0f} s")

        step = wait_for_progress(0)
        note("first report", step=step)
        order = ["worker SIGKILL", "worker SIGTERM", "node raylet SIGKILL"]
        rng.shuffle(order)
        order.insert(order.index("node raylet SIGKILL") + 1, "node restart")
        for kind in [*order, "driver SIGKILL, --resume train.num_workers=2"]:
            time.sleep(rng.uniform(*gaps))
            if driver.proc.poll() is not None:
                note(f"{kind} not injected: the run had ended")
                continue
            if kind.startswith("worker"):
                pids = [p for n in nodes for p in n.train_workers()]
                if not pids:
                    note(f"{kind} skipped: no worker running")
                    continue
                pid = rng.choice(sorted(pids))
                os.kill(pid, signal.SIGKILL if "KILL" in kind else signal.SIGTERM)
                note(kind, pid=pid)
            elif kind == "node raylet SIGKILL":
                pid = second.raylet
                os.kill(pid, signal.SIGKILL)
                note(kind, pid=pid)
                second.stop()  # what the raylet's death left of that node
            elif kind == "node restart":
                second = nodes[1] = Node(str(work / "ray"), head.gcs_address)
                note(kind)
            else:
                os.kill(driver.proc.pid, signal.SIGKILL)
                driver.proc.wait()
                run_dir = next(chaos_root.glob("soak-*"))
                driver = Driver(env, ["--resume", str(run_dir), "train.num_workers=2"], work / "driver.log")
                note(kind, run_dir=run_dir.name)
            if kind != "node raylet SIGKILL":  # the node's restart follows at once, whatever the run does
                step = wait_for_progress(step)
        code = driver.proc.wait(timeout=3600)
        if code != 0:
            raise RuntimeError(f"the chaos run ended with {code}: {driver.log.read_text()[-3000:]}")
        chaos_end = time.time() - t0
        note("chaos run finished")

        ref_root = work / "reference"
        reference = Driver(env, run_args(shards, ref_root, steps), work / "reference.log")
        if reference.proc.wait(timeout=3600) != 0:
            raise RuntimeError(f"the reference run failed: {reference.log.read_text()[-3000:]}")
    finally:
        for node in reversed(nodes):
            node.stop()

    from console.progress import WALL_TIME
    from pretrain import checkpoint as ck
    from pretrain.interrupt import preempted

    run_dir = next(chaos_root.glob("soak-*"))
    a, b = ck.load_checkpoint(run_dir), ck.load_checkpoint(next(ref_root.glob("soak-*")))
    gap = relative_gap({**a["encoder"], **a["task"]}, {**b["encoder"], **b["task"]})
    records = reports(chaos_root)
    workers, last = [], None
    for r in sorted(records, key=lambda r: r[WALL_TIME]):
        if r["workers"] != last:
            workers.append({"t_s": round(r[WALL_TIME] - t0, 1), "step": r["step"], "workers": r["workers"]})
            last = r["workers"]
    figures = {"command": "python benchmarks/chaos_soak.py" + (" --quick" if args.quick else "") + f" --seed {args.seed}",
               "steps": steps, "virtual_shards": 4, "seed": args.seed, "faults": faults, "workers_over_time": workers,
               "steps_reported": sorted({r["step"] for r in records}) == list(range(5, steps + 1, 5)),
               "final_step": a["step"], "reference_step": b["step"],
               "max_abs_dw_over_max_abs_w": gap, "sigterm": preempted(run_dir), "chaos_run_s": round(chaos_end, 1),
               "wall_s": round(time.time() - t0, 1)}
    print("faults injected:")
    for f in faults:
        print(f"  {f['t_s']:7.1f} s  {f['kind']}")
    print("workers over time (from the run's reports):")
    for w in workers:
        print(f"  {w['t_s']:7.1f} s  step {w['step']:5d}  {w['workers']} workers")
    print(f"final step {a['step']} (reference {b['step']}); max |Δw| / max |w| against the uninterrupted "
          f"fixed 4-worker run: {gap:.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if a["step"] == b["step"] == steps else 1


if __name__ == "__main__":
    sys.exit(main())
