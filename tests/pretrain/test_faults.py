"""Pretraining under real faults: damaged checkpoints, bad options, a cluster too small, a split with
nothing decodable, a SIGKILLed driver, two drivers on one run directory, and where a local Ray listens."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain import checkpoint as ck
from pretrain.__main__ import main as cli
from pretrain.config import ConfigError, load_config
from pretrain.run_dir import CONFIG_FILE, checkpoint_dir_name, step_of
from tests.support.shards import folder_shards

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 random 32×32 PNGs in 4 classes, 4 shards."""
    out = folder_shards(tmp_path_factory.mktemp("pf"), 40, n_classes=4, size=32, shard_size=10)
    (out.parent / "base.yaml").write_text("run:\n  seed: 0\n")
    return out


def overrides(shards, root, *extra):
    return [f"data.shards={shards}", f"run.root={root}", "run.name=f", "task.kind=infomax", "task.estimator=eta-mine",
            "task.kwargs.hidden_dim=16", "task.kwargs.embed_dim=8", "model.encoder=dcgan", "model.depth=2",
            "data.batch_size=8", "data.batches_per_epoch=4", "train.num_workers=1", "train.steps=16",
            "train.report_every=4", "train.checkpoint_every=4", *extra]


@pytest.fixture(autouse=True)
def _keep_ray_env(monkeypatch):
    """`python -m pretrain` without --address sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (loopback);
    in-process calls must not leave it to later tests that start multi-node clusters."""
    from pretrain.preflight import LOOPBACK_ENV

    monkeypatch.setenv(LOOPBACK_ENV, "restored")  # records the value before the test ...
    monkeypatch.delenv(LOOPBACK_ENV)  # ... and starts the test without it


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


@pytest.mark.parametrize("extra, match", [
    (["task.kwargs.hiden_dim=3"], "task.kwargs.hiden_dim is not an option"),
    (["task.estimator_kwargs.n_critc=2"], "task.estimator_kwargs.n_critc is not an option"),
    (["model.kwargs.widht=2"], "model.kwargs.widht is not an option"),
    (["data.batch_size=41"], "data.batch_size=41 exceeds the 40 images"),
    (["data.batch_size=30", "train.num_workers=2", "data.batches_per_epoch=null"], "cannot give each of 2 virtual shards"),
])
def test_worker_errors_are_found_before_ray(shards, tmp_path, capsys, extra, match):
    assert cli(["--config", str(shards.parent / "base.yaml"), *overrides(shards, tmp_path, *extra)]) == 2
    assert match in one_line_error(capsys)
    assert not list(tmp_path.iterdir())  # no run directory was made


def test_unwritable_run_root_is_one_line(shards, tmp_path, capsys):
    """A path under a regular file cannot be created, for root too (tests run as root)."""
    (tmp_path / "file").write_text("x")
    assert cli(["--config", str(shards.parent / "base.yaml"), *overrides(shards, tmp_path / "file" / "runs")]) == 2
    err = one_line_error(capsys)
    assert "run.root" in err and "is a file, not a directory" in err


def write_run(run_dir, shards, steps, ranks=1):
    """A run directory with config.yaml and checkpoints at ``steps``, written by the real writer."""
    from pretrain.config import to_plain
    from pretrain.train import build_optimizers, build_task_from_config

    cfg = load_config(None, overrides(shards, run_dir.parent, f"train.num_workers={ranks}"))
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(__import__("omegaconf").OmegaConf.to_yaml(cfg))
    task = build_task_from_config(cfg, None)
    main_opt, eta_opt = build_optimizers(cfg, task)
    for step in steps:
        ck.save_checkpoint(run_dir / checkpoint_dir_name(step), step=step, config=to_plain(cfg), task=task,
                           optimizer=main_opt, eta_optimizer=eta_opt, rng=[ck.capture_rng()] * ranks,
                           data_position=[{"epoch": 0, "batch": 0}] * ranks, permutations=None)
    return cfg


def test_truncated_and_flipped_checkpoints_are_skipped_and_named(shards, tmp_path):
    from pretrain.preflight import resume_point

    run = tmp_path / "run"
    cfg = write_run(run, shards, [4, 8, 12])
    flipped = run / checkpoint_dir_name(8) / ck.CHECKPOINT_FILE
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside a tensor
    flipped.write_bytes(bytes(data))
    truncated = run / checkpoint_dir_name(12) / ck.CHECKPOINT_FILE
    truncated.write_bytes(truncated.read_bytes()[:1000])

    point = resume_point(cfg, run)
    assert point.path.name == "checkpoint_000000004" and point.step == 4
    assert [s.split(":")[0] for s in point.skipped] == ["checkpoint_000000012", "checkpoint_000000008"]
    assert "resuming from checkpoint_000000004 (step 4); skipped checkpoint_000000012" in point.describe()
    for bad in (flipped, truncated):
        with pytest.raises(ValueError, match="does not match checkpoint.pt.sha256") as info:
            ck.load_checkpoint(bad)
        assert "\n" not in str(info.value)
    with pytest.warns(UserWarning, match="skipping newer damaged checkpoint"):
        assert ck.load_checkpoint(run)["step"] == 4  # a run directory: its newest intact checkpoint


def test_resume_on_workers_that_do_not_divide_the_virtual_shards_is_one_line_before_ray(shards, tmp_path, capsys):
    run = tmp_path / "run"
    # 3 ranks, data.virtual_shards unset: V = 3; 2 workers fit this 2-core machine but do not divide it
    write_run(run, shards, [4], ranks=3)
    before = (run / CONFIG_FILE).read_text()
    assert cli(["--resume", str(run), "train.num_workers=2"]) == 2
    assert "train.num_workers=2 does not divide data.virtual_shards=3" in one_line_error(capsys)
    assert cli(["--resume", str(run), "train.num_workers=1", "data.virtual_shards=4"]) == 2
    assert "resume with data.virtual_shards=3" in one_line_error(capsys)
    assert (run / CONFIG_FILE).read_text() == before  # nothing lost


def test_more_workers_than_the_cluster_has_is_one_line(ray_session, shards, tmp_path, capsys):
    from pretrain.train import launch

    cfg = load_config(None, overrides(shards, tmp_path, "train.num_workers=3", "train.resource_wait_s=0.5"))
    with pytest.raises(ConfigError, match=r"train.num_workers=3 need 3 CPU \(cluster has 2\)") as info:
        launch(cfg)
    assert "\n" not in str(info.value)
    assert "waiting up to 0.5 s (train.resource_wait_s) for the cluster to hold 3 CPU" in capsys.readouterr().out
    # a rank reserves its loader processes' CPUs too: one worker with 2 loader processes needs 3
    cfg = load_config(None, overrides(shards, tmp_path, "data.loader_workers=2", "train.resource_wait_s=0.5"))
    with pytest.raises(ConfigError, match=r"train.num_workers=1 need 3 CPU \(cluster has 2\).*"
                                          r"train.threads_per_worker \+ data.loader_workers"):
        launch(cfg)


def test_bf16_gradient_allreduce_on_a_cluster_without_gpus_is_one_line(ray_session, shards, tmp_path):
    """train.use_gpu left null finds no GPU: the bf16 hook (NCCL only) is refused before any worker
    starts, and the MLflow run the launch had opened is closed as failed, not left running."""
    from mlflow.tracking import MlflowClient

    from pretrain.train import launch

    uri = f"file:{tmp_path / 'mlruns'}"
    cfg = load_config(None, overrides(shards, tmp_path / "runs", "train.bf16_grad_allreduce=true", f"track.mlflow_uri={uri}",
                                      "track.mlflow_experiment=f"))
    with pytest.raises(ConfigError, match=r"train.bf16_grad_allreduce needs GPUs \(NCCL\) and this cluster has none") as info:
        launch(cfg)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "runs").iterdir())  # a run stopped before its first step leaves no directory
    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("f").experiment_id])
    assert found.info.status == "FAILED"


def test_split_with_nothing_decodable_ends_the_run_with_one_line(ray_session, shards, tmp_path):
    """Every image garbled: the run ends on the first failure (not after max_failures retries of an endless stream)."""
    from tests.data_prep.test_faults import damaged_copy, garble_images

    from pretrain.fatal import FATAL_FILE, RunFailed
    from pretrain.train import launch

    bad = damaged_copy(shards, tmp_path / "bad", garble_images)
    cfg = load_config(None, overrides(bad, tmp_path / "runs", "train.max_failures=2"))
    with pytest.raises(RunFailed, match="split 'train' of .* gives no decodable images") as info:
        launch(cfg)
    assert "\n" not in str(info.value)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / FATAL_FILE).read_text())["rank"] == 0
    assert not list(run_dir.glob("checkpoint_*"))


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listening(pid: int) -> list[tuple[str, str]]:
    """``[(ip, process name)]`` of every TCP socket that ``pid`` and its descendants listen on."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    names = {p.pid: " ".join(p.cmdline()[:3])[:60].strip() for p in procs}
    return [(c.laddr.ip, names[c.pid]) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in names]


def wait_for(condition, what: str, proc=None, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the driver exited first ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.ray
@pytest.mark.e2e
def test_sigkilled_driver_resumes_from_newest_complete_checkpoint_and_a_second_resume_is_refused(shards, tmp_path):
    """A real SIGKILL of `python -m pretrain` mid-run (its local Ray listening on loopback only), then
    `--resume` continues from the newest checkpoint on disk that verifies, while a second `--resume` of
    the same directory is refused with one line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    env.pop("RAY_ADDRESS", None)
    runs = tmp_path / "runs"

    def start(*args):
        return subprocess.Popen([sys.executable, "-m", "pretrain", *args], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def run_dir():
        dirs = list(runs.glob("f-*")) if runs.is_dir() else []
        return dirs[0] if dirs else None

    def complete(step):
        return lambda: run_dir() is not None and (run_dir() / checkpoint_dir_name(step) / ck.CHECKSUM_FILE).is_file()

    def reap(proc):
        """Wait for the driver's process group (its local Ray) to go; kill what is left of it."""
        try:
            wait_for(lambda: _group_gone(proc.pid), "the killed driver's Ray processes to exit", timeout=30)
        except AssertionError:
            os.killpg(proc.pid, signal.SIGKILL)

    first = start("--config", str(shards.parent / "base.yaml"), *overrides(shards, runs))
    try:
        wait_for(complete(4), "checkpoint 4", first)
        sockets = listening(first.pid)
        exposed = [(ip, name) for ip, name in sockets if ip not in LOOPBACK]
        # Ray's servers listen on loopback only; the one exception is PyTorch's process-group store in
        # the train worker, which c10d binds to every interface whatever host it is given (see the docs)
        assert sockets and [name for _, name in exposed] in ([], ["ray::RayTrainWorker"]), sockets
        wait_for(complete(8), "checkpoint 8", first)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        first.kill() if first.poll() is None else None
        reap(first)
    newest, _ = ck.newest_verified(run_dir())
    done = step_of(newest)
    assert done >= 8

    resumed = start("--resume", str(run_dir()))
    try:
        wait_for(lambda: (run_dir() / ".run.pid").is_file() and (run_dir() / ".run.pid").read_text() == str(resumed.pid),
                 "the resumed driver to hold the lock", resumed)
        second = subprocess.run([sys.executable, "-m", "pretrain", "--resume", str(run_dir())], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        err = second.stderr.strip()
        assert "\n" not in err and "is in use by another driver" in err, err
        out, err = resumed.communicate(timeout=600)
    finally:
        resumed.kill() if resumed.poll() is None else None
        reap(resumed)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resuming from {checkpoint_dir_name(done)} (step {done})" in out
    steps = [json.loads(line)["step"] for line in (run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 16 and steps.count(done + 4) == 1 if done < 16 else True  # nothing after `done` redone
    assert ck.load_checkpoint(run_dir())["step"] == 16


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
