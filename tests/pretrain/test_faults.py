"""Pretraining under real faults: damaged checkpoints, bad options, a cluster too small, a split with
nothing decodable (a SIGKILLed driver, two drivers on one run directory and where a local Ray listens:
test_driver_signals.py)."""
from __future__ import annotations

import json

import pytest

from pretrain import checkpoint as ck
from pretrain.__main__ import main as cli
from pretrain.config import ConfigError, load_config
from pretrain.run_dir import CONFIG_FILE, checkpoint_dir_name
from tests.support.shards import folder_shards


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
