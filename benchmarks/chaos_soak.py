"""Chaos soak of an elastic run: faults at seeded random steps against a two-node Ray on 127.0.0.1.

A head and a second node (W / 2 CPUs each, processes of this script, their files in one temporary
folder, stopped by this script: their processes by id, never ``ray stop``) run an InfoMax η-MINE run
with V = 4 virtual shards, ``train.num_workers=W`` and ``train.min_workers=1`` (W = 4; 2 with
``--quick``). Each fault has a step drawn from ``--seed``, and the soak injects it once the run has
reported that step (or a later one) and has recovered from the fault before: SIGKILL of a worker,
SIGTERM of a worker and the loss of the second node (its raylet SIGKILLed, its workers with it) in
a seeded order, then SIGKILL of the driver and
``python -m pretrain --resume RUN_DIR train.num_workers=W/2`` (another worker count). After the node's
loss the soak waits until Ray has marked the node dead and the run has reported on the W / 2 workers
left, then restarts the node and waits until the run reports on W workers again. The faults land
whatever the machine's speed: the soak waits for the run, the run never races the soak's clock.
Then the same config runs uninterrupted at a fixed W workers. The soak prints the faults, the worker
count over time (from the reports as the run wrote them) and max |Δw| / max |w| between the two final
checkpoints, and writes them to ``--out`` (JSON). It exits 1 when a fault could not be injected, the
run did not shrink or grow back, or the two runs did not both finish.

    python benchmarks/chaos_soak.py --out benchmarks/results/chaos_soak/soak.json   # ~10 minutes
    python benchmarks/chaos_soak.py --quick                                         # the test's version
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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START_ATTEMPTS = 6
REPORT_EVERY = 5
# the longest the soak waits for Ray to mark the lost node dead, for a report on the workers left and for
# one on all W after the node's return (each takes Ray tens of seconds: the GCS marks a node dead ~15 s
# after its raylet dies; a restart that asked for the lost node's workers waits
# RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S before Ray tries again)
RESIZE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Plan:
    steps: int                      # train.steps of both runs
    workers: int                    # train.num_workers of both runs (W); each node has W / 2 CPUs
    first: tuple[int, int]          # the first fault's step is drawn from this range
    gap: tuple[int, int]            # steps between one fault's step and the next's
    resize_every_s: float           # train.resize_every_s of the elastic run
    start_timeout_s: float | None   # RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (None: Ray's 60 s)
    health_check_ms: int | None     # the head's health_check_period_ms, its timeout twice that (None: Ray's
                                    # 3,000 and 10,000 ms; with 5 misses allowed, a lost node is marked dead ~15 s after)

    @property
    def half(self) -> int:
        """The CPUs of each node: the workers left after the node's loss, and the resume's worker count."""
        return self.workers // 2


PLANS = {"quick": Plan(steps=300, workers=2, first=(10, 15), gap=(10, 20), resize_every_s=2, start_timeout_s=10,
                       health_check_ms=1000),
         "full": Plan(steps=2400, workers=4, first=(100, 200), gap=(300, 500), resize_every_s=30, start_timeout_s=None,
                      health_check_ms=None)}
HEALTH_CHECK_MISSES = 3  # with Plan.health_check_ms: failed health checks before the GCS marks a node dead
FAULTS = ("worker SIGKILL", "worker SIGTERM", "node loss")


def driver_fault(plan: Plan) -> str:
    return f"driver SIGKILL, --resume train.num_workers={plan.half}"


def workers_text(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"


def schedule(seed: int, plan: Plan) -> list[tuple[int, str]]:
    """(step, fault) in the order injected: the three faults in a seeded order, the driver's last."""
    rng = random.Random(seed)
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    step, out = rng.randint(*plan.first), []
    for kind in [*kinds, driver_fault(plan)]:
        out.append((step, kind))
        step += rng.randint(*plan.gap)
    return out


class SoakError(RuntimeError):
    """A fault could not be injected or the run did not do what the soak waits for (one line)."""


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
    """One Ray node on 127.0.0.1 with ``num_cpus`` CPUs, its processes children of this one (the head when
    ``gcs_address`` is None). Started as Ray's own multi-node tests start theirs (``ray._private.node``):
    ``ray start`` of a second node swaps 127.0.0.1 for the host's address."""

    def __init__(self, temp_dir: str, num_cpus: int, gcs_address: str | None = None,
                 system_config: dict | None = None):
        from ray._private import ray_constants
        from ray._private.node import Node as RayNode
        from ray._private.parameter import RayParams

        params = dict(node_ip_address="127.0.0.1", num_cpus=num_cpus, num_gpus=0, temp_dir=temp_dir, include_dashboard=False,
                      object_store_memory=150 * 1024 ** 2, min_worker_port=0, max_worker_port=0)
        if gcs_address is not None:
            params.update(gcs_address=gcs_address, include_log_monitor=False, node_manager_port=0)
        elif system_config:
            params.update(_system_config=system_config)  # the head's GCS holds it for the cluster
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


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def node_alive(gcs_address: str, node_id: str) -> bool:
    """Whether the GCS at ``gcs_address`` holds node ``node_id`` (hex) alive."""
    from ray._raylet import GcsClient

    for nid, info in GcsClient(address=gcs_address).get_all_node_info().items():
        if nid.hex() == node_id:
            return info.state == 0  # GcsNodeInfo.ALIVE
    return False


def run_args(shards: Path, root: Path, plan: Plan) -> list[str]:
    return ["--config", "configs/demo_infomax_eta.yaml", f"data.shards={shards}", f"run.root={root}", "run.name=soak",
            "task.kind=infomax", "task.estimator=eta-mine", "task.kwargs.hidden_dim=16", "task.kwargs.embed_dim=8",
            "model.encoder=dcgan", "model.depth=2", "data.batch_size=4", "data.batches_per_epoch=10",
            "data.virtual_shards=4", f"train.num_workers={plan.workers}", f"train.steps={plan.steps}",
            f"train.report_every={REPORT_EVERY}", "train.checkpoint_every=10", "train.image_every=0",
            "train.threads_per_worker=1", "data.loader_workers=0", "train.max_failures=30", "train.resource_wait_s=600"]


class Driver:
    def __init__(self, env: dict, args: list[str], log: Path):
        self.log = log
        with open(log, "a") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pretrain", *args], cwd=REPO, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


class Reports:
    """The records of a run's ``metrics.jsonl`` as rank 0 appends them, each kept as written (the
    driver rewrites the file to one record per step when a launch ends; a growth or a restart from a
    checkpoint reports steps again, so the live records are the ones that show each group's size)."""

    def __init__(self, run_root: Path):
        self.run_root, self.offset, self.records = run_root, 0, []

    def poll(self) -> list[dict]:
        files = list(self.run_root.glob("soak-*/metrics.jsonl"))
        if files:
            data = files[0].read_bytes()
            if len(data) < self.offset:  # rewritten at a launch's end: every record in it was seen
                self.offset = len(data)
            end = data.rfind(b"\n", self.offset) + 1
            for line in data[self.offset:end].splitlines():
                try:
                    self.records.append(json.loads(line))
                except ValueError:  # a line cut short by a SIGKILL
                    continue
            self.offset = max(self.offset, end)
        return self.records


def relative_gap(a: dict, b: dict) -> float:
    """max |Δw| / max |w| over the floating tensors (weights, η, batch-norm statistics) of two states."""
    keys = [k for k in a if a[k].is_floating_point()]
    gap = max((a[k].double() - b[k].double()).abs().max().item() for k in keys)
    return gap / max(a[k].double().abs().max().item() for k in keys)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{PLANS['quick'].steps} steps, Ray's waits shortened "
                                                             "(the test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="the figures as JSON")
    parser.add_argument("--work", type=Path, help="where the shards, the runs and their logs go (default: a "
                                                  "temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "full"]
    rng = random.Random(args.seed + 1)  # which worker a signal goes to
    work = Path(tempfile.mkdtemp(prefix="soak", dir=args.work or "/tmp"))
    ray_files = tempfile.mkdtemp(prefix="soakray", dir="/tmp")  # short: Ray's socket paths (107 bytes at most)
    from console.progress import WALL_TIME
    from pretrain.interrupt import preempted
    from tests.support.shards import folder_shards

    shards = folder_shards(work / "data", 40, n_classes=4, size=32, shard_size=10)
    env = dict(os.environ, RAY_AUTH_TOKEN=os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32),
               RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
               PYTHONPATH=str(REPO), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    if plan.start_timeout_s is not None:
        env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(plan.start_timeout_s)
    t0 = time.time()
    events: list[dict] = []

    def note(kind: str, **detail) -> None:
        events.append({"t_s": round(time.time() - t0, 1), "kind": kind, **detail})
        print(f"[{time.time() - t0:7.1f} s] {kind} {detail or ''}", flush=True)

    os.environ.update({k: env[k] for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED",
                                           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")})  # the nodes started here
    chaos_root = work / "chaos"
    reports = Reports(chaos_root)
    planned = schedule(args.seed, plan)
    error, sigterm = None, None
    half = plan.half
    head = Node(ray_files, half, system_config=plan.health_check_ms and {
        "health_check_period_ms": plan.health_check_ms, "health_check_timeout_ms": 2 * plan.health_check_ms,
        "health_check_failure_threshold": HEALTH_CHECK_MISSES})
    env["RAY_ADDRESS"] = head.gcs_address
    second = Node(ray_files, half, head.gcs_address)
    nodes = [head, second]
    driver = Driver(env, [*run_args(shards, chaos_root, plan), "train.min_workers=1",
                          f"train.resize_every_s={plan.resize_every_s:g}"], work / "driver.log")
    try:
        def wait_for(what: str, test, timeout: float = 1800) -> dict:
            """The first record (in the order written) that passes ``test``; SoakError when the run ends
            or ``timeout`` passes first."""
            deadline, seen = time.monotonic() + timeout, 0
            while time.monotonic() < deadline:
                records = reports.poll()
                for r in records[seen:]:
                    if test(r):
                        return r
                seen = len(records)
                if driver.proc.poll() is not None:
                    reports.poll()
                    raise SoakError(f"{what}: the run ended first (exit code {driver.proc.returncode})")
                time.sleep(0.2)
            raise SoakError(f"{what}: not within {timeout:.0f} s")

        first = wait_for("a first report", lambda r: True)
        note("first report", step=first["step"], workers=first["workers"])
        since_fault = 0.0
        for at_step, kind in planned:
            r = wait_for(f"a report at step {at_step} or later before the {kind}",
                         lambda r: r["step"] >= at_step and r[WALL_TIME] > since_fault)
            group = [p for n in nodes for p in n.train_workers()]
            if kind.startswith("worker"):
                if not group:
                    raise SoakError(f"{kind}: no worker process running")
                pid = rng.choice(sorted(group))
                os.kill(pid, signal.SIGKILL if "KILL" in kind else signal.SIGTERM)
                note(kind, step=r["step"], pid=pid)
            elif kind == "node loss":
                node_id = second.node.node_id
                os.kill(second.raylet, signal.SIGKILL)
                note(kind, step=r["step"], raylet_pid=second.raylet)
                second.stop()  # what the raylet's death left of that node
                lost = time.time()
                deadline = time.monotonic() + RESIZE_TIMEOUT_S
                while node_alive(head.gcs_address, node_id):
                    if time.monotonic() > deadline:
                        raise SoakError(f"Ray did not mark the lost node dead within {RESIZE_TIMEOUT_S} s")
                    time.sleep(0.2)
                note("node marked dead by Ray", after_s=round(time.time() - lost, 1))
                r = wait_for(f"a report on the {half} workers left after the node's loss",
                             lambda r: r[WALL_TIME] > lost and r["workers"] == half, RESIZE_TIMEOUT_S)
                note(f"reported on {workers_text(half)}", step=r["step"], after_s=round(r[WALL_TIME] - lost, 1))
                second = nodes[1] = Node(ray_files, half, head.gcs_address)
                back = time.time()
                note("node restart")
                r = wait_for(f"a report on {plan.workers} workers after the node's return",
                             lambda r: r[WALL_TIME] > back and r["workers"] == plan.workers, RESIZE_TIMEOUT_S)
                note(f"reported on {workers_text(plan.workers)}", step=r["step"], after_s=round(r[WALL_TIME] - back, 1))
            else:
                os.kill(driver.proc.pid, signal.SIGKILL)
                driver.proc.wait()
                run_dir = next(chaos_root.glob("soak-*"))
                note(kind, step=r["step"], run_dir=run_dir.name)
                driver = Driver(env, ["--resume", str(run_dir), f"train.num_workers={half}"], work / "driver.log")
            # recovered: the group the fault hit is gone (Ray ends its workers on a restart) and a new one reports
            deadline = time.monotonic() + RESIZE_TIMEOUT_S
            while any(alive(p) for p in group):
                if time.monotonic() > deadline:
                    raise SoakError(f"the worker group survived the {kind} for {RESIZE_TIMEOUT_S} s")
                time.sleep(0.2)
            since_fault = time.time()
            r = wait_for(f"a report after the {kind}", lambda r: r[WALL_TIME] > since_fault)
            if kind == "worker SIGTERM":  # its record; a later launch (the resume) clears it
                sigterm = preempted(next(chaos_root.glob("soak-*")))
                note("reported", step=r["step"], workers=r["workers"], sigterm=sigterm)
            else:
                note("reported", step=r["step"], workers=r["workers"])
        code = driver.proc.wait(timeout=3600)
        if code != 0:
            raise SoakError(f"the chaos run ended with exit code {code}")
        chaos_end = time.time() - t0
        reports.poll()
        note("chaos run finished")

        ref_root = work / "reference"
        reference = Driver(env, run_args(shards, ref_root, plan), work / "reference.log")
        if reference.proc.wait(timeout=3600) != 0:
            raise SoakError(f"the reference run failed: {reference.tail()}")
    except SoakError as exc:
        error = str(exc)
        note(f"soak failed: {error}")
        print(driver.tail(), flush=True)
        if driver.proc.poll() is None:
            os.kill(driver.proc.pid, signal.SIGKILL)
            driver.proc.wait()
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(ray_files, ignore_errors=True)

    from pretrain import checkpoint as ck

    figures = {"command": "python benchmarks/chaos_soak.py" + (" --quick" if args.quick else "") + f" --seed {args.seed}",
               "steps": plan.steps, "workers": plan.workers, "virtual_shards": 4, "seed": args.seed, "resize_every_s": plan.resize_every_s,
               "worker_group_start_timeout_s": plan.start_timeout_s or 60.0,
               "health_check_ms": plan.health_check_ms,
               "planned": [{"step": s, "kind": k} for s, k in planned], "events": events, "error": error}
    workers, last = [], None
    for r in reports.records:
        if r["workers"] != last:
            workers.append({"t_s": round(r[WALL_TIME] - t0, 1), "step": r["step"], "workers": r["workers"]})
            last = r["workers"]
    figures["workers_over_time"] = workers
    run_dir = next(chaos_root.glob("soak-*"), None)
    if error is None:
        from tests.support.run_states import read_metrics

        a, b = ck.load_checkpoint(run_dir), ck.load_checkpoint(next(ref_root.glob("soak-*")))
        gap = relative_gap({**a["encoder"], **a["task"]}, {**b["encoder"], **b["task"]})
        figures.update({"steps_reported": [m["step"] for m in read_metrics(run_dir)],
                        "final_step": a["step"], "reference_step": b["step"], "max_abs_dw_over_max_abs_w": gap,
                        "sigterm": sigterm, "chaos_run_s": round(chaos_end, 1)})
    figures["wall_s"] = round(time.time() - t0, 1)
    print("events:")
    for e in events:
        print(f"  {e['t_s']:7.1f} s  {e['kind']}")
    print("workers over time (from the run's reports):")
    for w in workers:
        print(f"  {w['t_s']:7.1f} s  step {w['step']:5d}  {workers_text(w['workers'])}")
    if error is None:
        print(f"final step {figures['final_step']} (reference {figures['reference_step']}); max |Δw| / max |w| "
              f"against the uninterrupted fixed {plan.workers}-worker run: {figures['max_abs_dw_over_max_abs_w']:.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if error is None and figures["final_step"] == figures["reference_step"] == plan.steps else 1


if __name__ == "__main__":
    sys.exit(main())
