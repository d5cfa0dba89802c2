"""One run's life under the signals a real ``python -m pretrain`` meets, in the order a user meets them:

- SIGKILL of the driver mid-run (its local Ray listening on loopback only): ``--resume`` continues from
  the newest complete checkpoint on disk, and a second ``--resume`` of the same directory while the
  first holds it is refused with one line;
- Ctrl-C: the workers write one more checkpoint at their next report, then one line naming the step,
  the checkpoint and the command that continues the run; exit 130; the run lock released; nothing of
  Ray's on the console;
- the same command again says the interrupted run exists and how to continue it (SIGTERM before Ray
  starts ends it at once, leaving no second run directory);
- SIGTERM to the driver alone (a scheduler stopping the job): it stops at once, exit 143.

Ctrl-C comes to a resumed run here; that a resumed run ends where the uninterrupted one ends is
``test_train_s3.py``'s and ``test_preemption.py``'s (the command line's ``--resume`` to the last step)."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from filelock import FileLock

from pretrain import checkpoint as ck
from pretrain.interrupt import INTERRUPTED_FILE
from pretrain.run_dir import checkpoint_dir_name
from pretrain.run_lock import LOCK_FILE
from tests.support.shards import folder_shards

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/demo_infomax_eta.yaml"
LINE = re.compile(r"^interrupted \((?P<sig>SIG\w+)\) at step (?P<step>\d+); last checkpoint (?P<ckpt>\S+) "
                  r"\(step (?P<ckpt_step>\d+)\); continue with `python -m pretrain --resume (?P<run>\S+)`$")
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return folder_shards(tmp_path_factory.mktemp("int"), 40, n_classes=4, size=32, shard_size=10)


def env() -> dict:
    out = {**os.environ, "PYTHONPATH": REPO, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    out.pop("RAY_ADDRESS", None)
    return out


class Driver:
    """``python -m pretrain ARGS`` in a session of its own, its output in files read as it grows."""

    def __init__(self, tmp_path, name: str, *args: str):
        self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "pretrain", *args], cwd=REPO, env=env(),
                                         stdout=out, stderr=err, start_new_session=True)

    def wait_for(self, condition, what: str, timeout: float = 600):
        """The first true value of ``condition()``, polled while the driver runs."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            assert self.proc.poll() is None, f"{what}: exited ({self.proc.returncode}) first: {self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s: {self.text()[-3000:]}"
            time.sleep(0.2)
        return value

    def wait_for_line(self, pattern: str) -> str:
        def first_match():
            return next((line for line in self.out.read_text().splitlines() if re.match(pattern, line)), None)

        return self.wait_for(first_match, f"line {pattern!r}")

    def kill(self) -> None:
        """SIGKILL of the driver, then of its local Ray (the train worker perhaps in the middle of a
        checkpoint): Ray's own clean-up after a dead driver takes over 30 s here, the worker training on
        meanwhile."""
        ray = psutil.Process(self.proc.pid).children(recursive=True)  # before the driver's end reparents them
        self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # what shares its process group, the list's too
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in ray:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(ray, timeout=30)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.kill()

    def text(self) -> str:
        return self.out.read_text() + self.err.read_text()


@pytest.fixture
def driver(tmp_path):
    """Starts :class:`Driver` s; at the end (a failed assertion included) kills each one still running
    and its local Ray: a driver left running would train on for a million steps."""
    started = []

    def start(name: str, *args: str) -> Driver:
        started.append(Driver(tmp_path, name, *args))
        return started[-1]

    yield start
    for d in started:
        if d.proc.poll() is None:  # one that ended is reaped: its pid may be another process's by now
            d.kill()


def listening(pid: int) -> list[tuple[str, str]]:
    """``[(ip, process name)]`` of every TCP socket that ``pid`` and its descendants listen on."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    names = {p.pid: " ".join(p.cmdline()[:3])[:60].strip() for p in procs}
    return [(c.laddr.ip, names[c.pid]) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in names]


def assert_quiet(text: str) -> None:
    assert "Traceback" not in text and "ERROR" not in text and "Gracefully aborting" not in text, text


def lock_released(run_dir) -> None:
    FileLock(os.path.join(run_dir, LOCK_FILE), timeout=0).acquire()


@pytest.mark.ray
@pytest.mark.e2e
def test_sigkill_resume_ctrl_c_the_same_command_again_and_sigterm(shards, tmp_path, driver):
    runs = tmp_path / "runs"
    args = [f"data.shards={shards}", f"run.root={runs}", "run.name=sig", "task.kind=infomax",
            "task.estimator=eta-mine", "task.kwargs.hidden_dim=16", "task.kwargs.embed_dim=8", "model.encoder=dcgan",
            "model.depth=2", "data.batch_size=8", "data.batches_per_epoch=4", "train.num_workers=1", "train.steps=1000000",
            "train.report_every=4", "train.checkpoint_every=4"]

    def run_dir():
        dirs = list(runs.glob("sig-*")) if runs.is_dir() else []
        return dirs[0] if dirs else None

    def complete(step):
        return lambda: (d := run_dir()) is not None and (d / checkpoint_dir_name(step) / ck.CHECKSUM_FILE).is_file()

    # SIGKILL of the driver and its local Ray once checkpoint 8 is complete; Ray's servers listened on
    # loopback only. The one exception is PyTorch's process-group store in the train worker, which c10d
    # binds to every interface whatever host it is given (docs/reliability.md).
    first = driver("first", "--config", CONFIG, *args)
    first.wait_for(complete(4), "checkpoint 4")
    sockets = listening(first.proc.pid)
    exposed = [(ip, name) for ip, name in sockets if ip not in LOOPBACK]
    assert sockets and [name for _, name in exposed] in ([], ["ray::RayTrainWorker"]), sockets
    first.wait_for(complete(8), "checkpoint 8")
    first.kill()
    run = run_dir()  # the one run directory from here on (a new run of the same config would make another)
    newest, _ = ck.newest_verified(run)
    done = ck.step_of(newest)
    assert done >= 8

    # --resume continues from the newest complete checkpoint (no checkpoint but the one Ctrl-C asks for); a
    # second --resume of the directory while the first holds it is refused with one line.
    resumed = driver("resumed", "--resume", str(run), "train.checkpoint_every=1000000",
                     "train.interrupt_checkpoint_s=0")
    pid_file = (run / LOCK_FILE).with_suffix(".pid")  # where the lock's holder writes its pid
    resumed.wait_for(lambda: pid_file.is_file() and pid_file.read_text() == str(resumed.proc.pid), "the run lock")
    second = driver("second", "--resume", str(run))
    assert second.finish() == 1, second.text()[-3000:]
    refused = second.err.read_text().strip()
    assert "\n" not in refused and "is in use by another driver" in refused, refused

    # Ctrl-C in a terminal: SIGINT to the driver's whole process group. The last checkpoint is older than
    # train.interrupt_checkpoint_s=0, so the workers write one at their next report, then stop.
    resumed.wait_for_line(rf"^step {done + 4}/")
    os.killpg(resumed.proc.pid, signal.SIGINT)
    assert resumed.finish() == 130, resumed.text()[-3000:]
    assert f"resuming from {checkpoint_dir_name(done)} (step {done})" in resumed.out.read_text()
    m = LINE.match(resumed.err.read_text().strip().splitlines()[-1])
    assert m and m["sig"] == "SIGINT" and m["step"] == m["ckpt_step"] and m["run"] == str(run), resumed.text()
    step = int(m["step"])
    newest, _ = ck.newest_verified(run)
    assert str(newest) == m["ckpt"] and ck.step_of(newest) == step >= done + 4  # the checkpoint the interruption wrote
    assert ck.load_checkpoint(run)["step"] == step  # the run directory loads as its newest checkpoint
    # the resumed run's own reports: from the first step after the checkpoint on, none twice (metrics.jsonl
    # cannot tell: the driver rewrites it with one record a step)
    reported = [int(n) for n in re.findall(r"^step (\d+)/", resumed.out.read_text(), re.M)]
    assert reported[0] == done + 4 and reported == sorted(set(reported)), reported
    assert_quiet(resumed.text())
    lock_released(run)

    # The same command as the first: it says the interrupted run exists and how to continue it; a SIGTERM
    # before Ray starts ends it at once, leaving no second run directory behind.
    again = driver("again", "--config", CONFIG, *args)
    note = again.wait_for_line(r"^note: ")
    assert note == (f"note: {run} was interrupted at step {step}; this starts a new run "
                    f"(to continue that one instead: python -m pretrain --resume {run})")
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish() == 143, again.text()[-3000:]
    assert list(runs.iterdir()) == [run]

    # SIGTERM (a scheduler stopping the job) to the driver alone, soon after a report: it stops at once,
    # naming the last checkpoint; exit 143; Ray's processes go with it.
    last = driver("last", "--resume", str(run), "train.checkpoint_every=1000000", "train.interrupt_checkpoint_s=100000")
    last.wait_for_line(rf"^step {step + 4}/")
    last.proc.send_signal(signal.SIGTERM)
    assert last.finish() == 143, last.text()[-3000:]
    m = LINE.match(last.err.read_text().strip().splitlines()[-1])
    assert m and m["sig"] == "SIGTERM" and int(m["step"]) > step, last.err.read_text()
    # no checkpoint was asked for; Ray's teardown sends the workers SIGTERM, which they take as a
    # preemption notice: one that reaches its next report first writes one more (docs/reliability.md)
    newest_now, _ = ck.newest_verified(run)
    assert m["ckpt"] in (str(newest), str(newest_now)), (m["ckpt"], newest, newest_now)
    assert (run / INTERRUPTED_FILE).is_file()
    assert_quiet(last.text())
    lock_released(run)
