"""Ctrl-C and SIGTERM to a real ``python -m pretrain``: one line naming the step, the last checkpoint
and the command that continues the run; exit 130 / 143; the run lock released; nothing of Ray's on
the console; a new run of the same config says the interrupted one exists."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from filelock import FileLock

from pretrain import checkpoint as ck
from pretrain.interrupt import INTERRUPTED_FILE
from pretrain.run_lock import LOCK_FILE
from tests.support.shards import folder_shards

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINE = re.compile(r"^interrupted \((?P<sig>SIG\w+)\) at step (?P<step>\d+); last checkpoint (?P<ckpt>\S+) "
                  r"\(step (?P<ckpt_step>\d+)\); continue with `python -m pretrain --resume (?P<run>\S+)`$")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return folder_shards(tmp_path_factory.mktemp("int"), 40, n_classes=4, size=32, shard_size=10)


class Driver:
    """``python -m pretrain ARGS`` in a session of its own, its output in files read as it grows."""

    def __init__(self, tmp_path, name: str, *args: str):
        env = {**os.environ, "PYTHONPATH": REPO, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
        env.pop("RAY_ADDRESS", None)
        self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "pretrain", *args], cwd=REPO, env=env,
                                         stdout=out, stderr=err, start_new_session=True)

    def wait_for_line(self, pattern: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out.read_text().splitlines():
                if re.match(pattern, line):
                    return line
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) first: {self.text()[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no line {pattern!r} in {timeout} s: {self.text()[-3000:]}")

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def text(self) -> str:
        return self.out.read_text() + self.err.read_text()


def assert_quiet(text: str) -> None:
    assert "Traceback" not in text and "ERROR" not in text and "Gracefully aborting" not in text, text


@pytest.mark.ray
@pytest.mark.e2e
def test_ctrl_c_writes_a_checkpoint_and_sigterm_stops_at_once_both_say_how_to_continue(shards, tmp_path):
    runs = tmp_path / "runs"
    args = [f"data.shards={shards}", f"run.root={runs}", "run.name=sig", "task.kind=infomax",
            "task.estimator=eta-mine", "task.kwargs.hidden_dim=16", "task.kwargs.embed_dim=8", "model.encoder=dcgan",
            "model.depth=2", "data.batch_size=8", "data.batches_per_epoch=4", "train.num_workers=1", "train.steps=1000000",
            "train.report_every=4", "train.checkpoint_every=1000000"]

    # Ctrl-C in a terminal: SIGINT to the driver's whole process group. The last checkpoint is older
    # than train.interrupt_checkpoint_s=0, so the workers write one at their next report, then stop.
    first = Driver(tmp_path, "first", "--config", "configs/demo_infomax_eta.yaml", *args, "train.interrupt_checkpoint_s=0")
    first.wait_for_line(r"^step 4/")
    os.killpg(first.proc.pid, signal.SIGINT)
    assert first.finish() == 130, first.text()[-3000:]
    m = LINE.match(first.err.read_text().strip().splitlines()[-1])
    assert m and m["sig"] == "SIGINT" and m["step"] == m["ckpt_step"], first.err.read_text()
    run_dir, step = m["run"], int(m["step"])
    newest, _ = ck.newest_verified(run_dir)
    assert str(newest) == m["ckpt"] and ck.step_of(newest) == step >= 4  # the checkpoint the interruption wrote
    assert_quiet(first.text())
    FileLock(os.path.join(run_dir, LOCK_FILE), timeout=0).acquire()  # the lock went with the driver

    # The same command again: it says the interrupted run exists and how to continue it; a SIGTERM
    # before Ray starts ends it at once, leaving no second run directory behind.
    again = Driver(tmp_path, "again", "--config", "configs/demo_infomax_eta.yaml", *args)
    note = again.wait_for_line(r"^note: ")
    assert note == (f"note: {run_dir} was interrupted at step {step}; this starts a new run "
                    f"(to continue that one instead: python -m pretrain --resume {run_dir})")
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish() == 143, again.text()[-3000:]
    assert [str(p) for p in runs.iterdir()] == [run_dir]

    # SIGTERM (a scheduler stopping the job) to the driver alone, soon after a checkpoint: it stops at
    # once, naming the last checkpoint; exit 143; Ray's processes go with it.
    resumed = Driver(tmp_path, "resumed", "--resume", run_dir, "train.interrupt_checkpoint_s=100000")
    resumed.wait_for_line(rf"^step {step + 4}/")
    resumed.proc.send_signal(signal.SIGTERM)
    assert resumed.finish() == 143, resumed.text()[-3000:]
    m = LINE.match(resumed.err.read_text().strip().splitlines()[-1])
    assert m and m["sig"] == "SIGTERM" and int(m["step"]) > step, resumed.err.read_text()
    # no checkpoint was asked for; Ray's teardown sends the workers SIGTERM, which they take as a
    # preemption notice: one that reaches its next report first writes one more (docs/reliability.md)
    newest_now, _ = ck.newest_verified(run_dir)
    assert m["ckpt"] in (str(newest), str(newest_now)), (m["ckpt"], newest, newest_now)
    assert (tmp_path / "runs" / os.path.basename(run_dir) / INTERRUPTED_FILE).is_file()
    assert_quiet(resumed.text())
    FileLock(os.path.join(run_dir, LOCK_FILE), timeout=0).acquire()
