"""Pretraining with everything in an S3 bucket (a moto server on 127.0.0.1, fixture ``s3``): shards
streamed from it, Ray Train's checkpoints, config, metrics and TensorBoard written to it; a worker
killed mid-run and then the driver SIGKILLed, resumed from the bucket to the very state of the same
run uninterrupted on the same shards in a local folder; the linear probe reading the checkpoint and the
shards from the bucket. Bad URLs, a missing bucket and missing credentials each stop the CLI with one
line before Ray starts."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import storage
from pretrain import checkpoint as ck
from pretrain.run_dir import CRASH_MARKER, experiment_dir, new_run_dir
from tests.support.run_states import (DIGITS_ARGS, assert_same_state, infomax_overrides, read_metrics,
                                      reference_overrides)

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_session(s3):
    """One Ray session for the module, started after ``s3`` so its workers see the S3 endpoint."""
    import ray

    # The test session's Ray (tests/conftest.py) was started without the endpoint in its environment;
    # the Ray tests run last and this module last of them, so it can go.
    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    tmp = tempfile.mkdtemp(prefix="rt")  # short: Ray's socket paths must stay under ~107 chars
    ray.init(num_cpus=2, _temp_dir=tmp, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def shards(s3):
    from data_prep.__main__ import main as data_prep_main

    url = s3.bucket("data") + "/digits"
    assert data_prep_main([*DIGITS_ARGS, "--out", url]) == 0
    return url


@pytest.fixture
def empty_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return str(path)


def only_run(root: str) -> str:
    (name,) = [n for n in storage.listdir(root) if n.startswith("im-")]
    return storage.join(root, name)


def test_bad_url_missing_bucket_and_no_credentials_are_one_line(s3, shards, empty_config, tmp_path, monkeypatch,
                                                                capsys):
    from pretrain.__main__ import main as cli

    monkeypatch.chdir(tmp_path)
    cases = [(["data.shards=htp://data/digits"], "data.shards: htp://data/digits: unsupported URL scheme htp://"),
             (["run.root=s3://no-such-bucket/runs"], "run.root: s3://no-such-bucket/runs: bucket s3://no-such-bucket "
                                                      "does not exist"),
             (["run.storage_path=gs:///runs"], "run.storage_path: gs:///runs: no bucket in the URL")]
    for extra, expected in cases:
        assert cli(["--config", empty_config, *infomax_overrides(shards, str(tmp_path / "runs"), *extra)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and expected in err, err
    assert cli(["--resume", "s3://no-such-bucket/runs/im-1"]) == 2
    assert "s3://no-such-bucket" in capsys.readouterr().err

    import s3fs

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        assert cli(["--config", empty_config, *infomax_overrides(shards, "s3://data/runs")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "data.shards: s3://data/digits" in err and "no credentials" in err, err
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]  # nothing local was made


def test_a_bucket_storage_path_holds_the_whole_run_directory(s3, shards, tmp_path):
    from pretrain.config import load_config

    cfg = load_config(None, infomax_overrides(shards, str(tmp_path / "runs"), "run.storage_path=s3://data/runs/"))
    assert cfg.run.storage_path == "s3://data/runs"
    run = new_run_dir(cfg)
    assert run.startswith("s3://data/runs/im-") and not (tmp_path / "runs").exists()
    storage.write_text(f"{run}/config.yaml", f"run:\n  storage_path: {cfg.run.storage_path}\n")
    assert experiment_dir(run) == run  # Ray Train's <storage_path>/<name> is the run directory itself


def test_pretraining_in_a_bucket_survives_a_worker_kill_and_a_driver_kill(s3, ray_session, shards, infomax_reference,
                                                                          empty_config, tmp_path, monkeypatch, capsys):
    from pretrain.__main__ import main as cli
    from pretrain.config import load_config

    monkeypatch.chdir(tmp_path)
    runs = s3.bucket("runs")
    # A driver of its own (joining this Ray) whose last worker dies at step 6: Ray Train restarts the
    # group from the bucket's checkpoint 4. Once checkpoint 8 is in the bucket the driver is SIGKILLed.
    # A report every 2 steps, uploads held back for an hour: the reports between checkpoints go up
    # with the next checkpoint, none is lost.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    root = f"{runs}/killed"
    overrides = reference_overrides(shards, root, "train.crash_at_step=6", "train.report_every=2",
                                    "train.upload_every_s=3600")
    driver = subprocess.Popen(
        [sys.executable, "-m", "pretrain", "--config", empty_config, "--address", ray_session, *overrides,
         "train.steps=1000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 540  # a hang guard: a loaded machine is slow
        while True:
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint 8 in the bucket"
            run = only_run(root) if storage.listdir(root) else None
            if run and storage.isfile(f"{run}/checkpoint_000000008/checkpoint.pt"):
                break
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert run.startswith(f"{root}/im-") and storage.read_text(f"{run}/{CRASH_MARKER}") == "6"

    # cluster.resume finds the run in the bucket by its name and resumes it, to the very state of the
    # same run uninterrupted on the same shards in a local folder (tests/conftest.py)
    from cluster.resume import pretrain_command

    command = pretrain_command(Path(empty_config), overrides)
    assert command[3:5] == ["--resume", run]
    assert cli(command[3:]) == 0
    assert f"latest checkpoint: {run}/checkpoint_000000012" in capsys.readouterr().out.splitlines()  # the summary
    resumed = ck.load_checkpoint(run)
    assert resumed["path"].startswith(run + "/checkpoint_000000012")
    assert_same_state(resumed, ck.load_checkpoint(infomax_reference))
    assert [m["step"] for m in read_metrics(run)] == [2, 4, 6, 8, 10, 12]  # one record a step, however often re-run
    assert [n for n in storage.listdir(run + "/tb") if n.startswith("events.out.tfevents.")]
    assert load_config(run + "/config.yaml").data.shards == shards

    # the probe reads the checkpoint and the shards from the bucket, and writes its results there
    from eval.linear import evaluate_checkpoints

    (res,) = evaluate_checkpoints([run], shards, epochs=2, seeds=1, out=f"{runs}/eval", cache_dir=None,
                                  use_ray=False, progress=False)
    assert res["checkpoint"] == f"{run}/checkpoint_000000012/checkpoint.pt" and res["data"] == shards
    assert res["step"] == 12 and 0.0 <= res["top1"]["mean"] <= 100.0
    written = json.loads(storage.read_text(f"{runs}/eval/results.json"))
    assert written["checkpoint"] == res["checkpoint"] and written["top1"] == res["top1"] and res["out"] == f"{runs}/eval"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]  # nothing local was made


def test_the_store_dying_mid_run_is_one_line(s3, ray_session, shards, empty_config, tmp_path):
    """The S3 server is SIGKILLed once the run's first checkpoint is in the bucket: the driver ends with
    one line naming the store and the --resume command, exit 1. It kills this module's server, so it
    is the module's last test."""
    import psutil

    # one attempt a request (botocore's default is 5, with a back-off between them): the same error line,
    # without the retries of a store that is not coming back
    env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_MAX_ATTEMPTS": "1"}
    root = f"{s3.bucket('dying')}/runs"
    driver = subprocess.Popen(
        [sys.executable, "-m", "pretrain", "--config", empty_config, "--address", ray_session,
         *infomax_overrides(shards, root, "train.steps=100000", "train.upload_every_s=0")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 540  # a hang guard: a loaded machine is slow
        while True:
            assert driver.poll() is None, driver.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint 4 in the bucket"
            run = only_run(root) if storage.listdir(root) else None
            if run and storage.isfile(f"{run}/checkpoint_000000004/checkpoint.pt.sha256"):
                break
            time.sleep(0.2)
        port = int(s3.endpoint.rsplit(":", 1)[1])
        (server,) = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
        os.kill(server, signal.SIGKILL)  # the server this module's s3 fixture started
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    lines = err.strip().splitlines()
    assert driver.returncode == 1, err[-3000:]
    assert lines[-1].startswith("error: ") and f"--resume {run} once the store is back" in lines[-1], err[-3000:]
    # the driver's own error is that line; Ray's controller still logs its failed state upload to the
    # console itself (prefixed "(TrainController pid=...)"), which is Ray's output, not a traceback of ours
    assert not [line for line in lines if line.startswith("Traceback")], err[-3000:]
