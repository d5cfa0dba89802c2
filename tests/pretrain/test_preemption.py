"""SIGTERM to one Ray Train worker process (a spot reclaim's first word) on the test session's Ray.

A real ``os.kill(pid, SIGTERM)`` of a worker of a 2-worker InfoMax run: the group writes a checkpoint at
the next report (every step here: report_every=1); a fixed-size run then ends with the driver's one line (exit code 143) and
``--resume`` continues it bit-identically; an elastic run goes on (Ray restarts the group from that
checkpoint) and ends with the same weights as the fixed run stopped and resumed. And the elastic policy's
reservation with Ray's autoscaling coordinator, which a killed driver leaves behind.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest

from console.progress import WALL_TIME
from pretrain import checkpoint as ck
from pretrain.config import load_config
from pretrain.interrupt import INTERRUPTED_FILE, Interrupted, preempted
from tests.support.run_states import assert_same_state, infomax_overrides, read_metrics
from tests.support.shards import folder_shards

pytestmark = pytest.mark.ray

STEPS = 30


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return folder_shards(tmp_path_factory.mktemp("pre"), 40, n_classes=4, size=32, shard_size=10)


def run_cfg(shards, root, *extra):
    return load_config(None, infomax_overrides(shards, root, "task.kwargs.hidden_dim=16", "task.kwargs.embed_dim=8",
                                               "data.batch_size=4", f"train.steps={STEPS}", "train.report_every=1",
                                               "train.checkpoint_every=1000", *extra))


def train_workers() -> list[psutil.Process]:
    """The Ray Train worker processes of this test session's Ray (descendants of this process)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class SigtermOneWorker(threading.Thread):
    """Once the run has reported step 2, SIGTERM one of its worker processes (once). From the moment
    both workers are up they run in slices of :data:`SLICE_S` and are stopped (SIGSTOP) while the thread
    reads the run's reports, so the signal lands before the run's last step however loaded the machine
    (a 30-step run outruns a thread that merely polls when it shares one core with it)."""

    def __init__(self, run_root):
        super().__init__(daemon=True)
        self.run_root, self.pid, self.sent_at = run_root, None, None

    def run(self):
        deadline = time.monotonic() + 1200  # a loaded machine takes minutes to start a group
        while len(workers := train_workers()) != 2:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        while time.monotonic() < deadline and any(alive(w.pid) for w in workers):  # gone: the run failed
            signal_all(workers, "suspend")
            try:
                metrics = list(self.run_root.glob("*/metrics.jsonl"))
                if metrics and len(metrics[0].read_text().splitlines()) >= 2:
                    self.pid, self.sent_at = workers[-1].pid, time.time()
                    os.kill(self.pid, signal.SIGTERM)
                    return
            finally:
                signal_all(workers, "resume")
            time.sleep(SLICE_S)


SLICE_S = 0.02


def signal_all(procs: list[psutil.Process], how: str) -> None:
    """``suspend`` (SIGSTOP) or ``resume`` (SIGCONT) each of ``procs`` that is still there."""
    for p in procs:
        try:
            getattr(p, how)()
        except psutil.Error:
            pass


def checkpoint_at_the_next_step(run_dir, sent_at: float) -> dict:
    """``preempted.json``: the checkpoint's step is the first step begun after the worker took the
    signal (at most the step it was in finishes first)."""
    record = preempted(run_dir)
    assert record is not None and record["signal"] == "SIGTERM"
    assert sent_at <= record["sigterm_at"] <= record["committed_at"]
    after = [m["step"] for m in read_metrics(run_dir) if m[WALL_TIME] > record["sigterm_at"]]
    assert min(after) >= record["step"] - 1 and record["step"] in after
    assert ck.step_of(record["checkpoint"]) == record["step"]
    return record


def elastic_launch(name: str):
    """The policy of a launch of run ``name`` (elastic, 1-2 workers of 1 CPU), as its controller has it
    once started: its workers' reservation sent to Ray's autoscaling coordinator."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2._internal.execution.context import TrainRunContext

    from pretrain.elastic import DivisorScalingPolicy

    scaling = ScalingConfig(num_workers=(1, 2), resources_per_worker={"CPU": 1})
    policy = DivisorScalingPolicy(scaling, virtual_shards=2)
    policy.after_controller_start(TrainRunContext(run_config=RunConfig(name=name), train_loop_config=None,
                                                  scaling_config=scaling, backend_config=None, dataset_config=None))
    return policy


def test_a_resumed_elastic_launch_takes_over_the_reservation_its_killed_driver_left(ray_session):
    """Ray's coordinator holds a launch's reservation until the launch cancels it or 180 s pass; a
    SIGKILLed driver cancels nothing. The next launch of the same run (its ``--resume``) gets the 2 CPUs of
    the session's Ray at once; a launch of another run still finds them reserved and waits."""
    from ray.train.v2._internal.execution.scaling_policy import NoopDecision, ResizeDecision

    launches = [elastic_launch("run-a")]  # its driver is killed: it never cancels
    try:
        launches.append(elastic_launch("run-b"))
        assert isinstance(launches[-1].make_decision_for_non_running_worker_group(), NoopDecision)
        launches.append(elastic_launch("run-a"))
        decision = launches[-1].make_decision_for_non_running_worker_group()
        assert isinstance(decision, ResizeDecision) and decision.num_workers == 2
    finally:
        for policy in launches:
            policy._cancel_resource_request()


@pytest.fixture(scope="module")
def fixed_run(ray_session, shards, tmp_path_factory):
    """A fixed-size run whose worker got SIGTERM: (the driver's Interrupted, the run directory, the pid
    signalled, when), and its final checkpoint after ``--resume`` ran it to the end."""
    from pretrain.__main__ import main as cli
    from pretrain.train import launch

    root = tmp_path_factory.mktemp("fixed")
    killer = SigtermOneWorker(root)
    killer.start()
    with pytest.raises(Interrupted) as stopped:
        launch(run_cfg(shards, root))
    killer.join()
    run_dir = next(root.glob("im-*"))
    record = checkpoint_at_the_next_step(run_dir, killer.sent_at)
    interrupted = json.loads((run_dir / INTERRUPTED_FILE).read_text())
    at_stop = ck.load_checkpoint(run_dir)["step"]
    assert cli(["--resume", str(run_dir)]) == 0
    return {"error": stopped.value, "record": record, "interrupted": interrupted, "step_at_stop": at_stop,
            "pid": killer.pid, "sent_at": killer.sent_at, "final": ck.load_checkpoint(run_dir)}


@pytest.mark.e2e
@pytest.mark.timeout(1500)
def test_sigterm_to_a_worker_of_a_fixed_run_checkpoints_at_the_next_step_and_ends_resumable(fixed_run):
    record = fixed_run["record"]
    assert record["pid"] == fixed_run["pid"] and not record["elastic"] and record["step"] < STEPS
    assert fixed_run["error"].exit_code == 143
    assert str(fixed_run["error"]).startswith(f"interrupted (SIGTERM) at step {record['step']}; last checkpoint ")
    assert fixed_run["interrupted"]["step"] == fixed_run["step_at_stop"] == record["step"]
    print(f"fixed: SIGTERM to committed checkpoint {record['committed_at'] - fixed_run['sent_at']:.2f} s "
          f"(from the handler: {record['seconds_to_checkpoint']:.2f} s)")
    assert fixed_run["final"]["step"] == STEPS


@pytest.mark.e2e
@pytest.mark.timeout(1500)
def test_sigterm_to_a_worker_of_an_elastic_run_checkpoints_and_the_run_goes_on(fixed_run, shards, tmp_path):
    """Ray restarts the group from the SIGTERM's checkpoint; the run ends bit-identical to the fixed run
    that was stopped and resumed (both continue from a checkpoint at the same worker count)."""
    from pretrain.train import launch

    killer = SigtermOneWorker(tmp_path)
    killer.start()
    run_dir = launch(run_cfg(shards, tmp_path, "train.min_workers=1")).run_dir
    killer.join()
    record = checkpoint_at_the_next_step(run_dir, killer.sent_at)
    assert record["pid"] == killer.pid and record["elastic"] and record["step"] < STEPS
    assert not alive(killer.pid)
    print(f"elastic: SIGTERM to committed checkpoint {record['committed_at'] - killer.sent_at:.2f} s "
          f"(from the handler: {record['seconds_to_checkpoint']:.2f} s)")
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, STEPS + 1))
    assert_same_state(ck.load_checkpoint(run_dir), fixed_run["final"])
