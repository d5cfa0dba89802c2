"""Driver-side tracking without Ray: a resumed run continues its MLflow run; hparams need a report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.config import load_config
from console.progress import WALL_TIME
from pretrain.tracking import MLFLOW_RUN_ID_FILE, Tracking, final_metrics, flat_config

from ..eval.conftest import make_config, write_checkpoint


def test_flat_config_keeps_scalars_and_writes_the_rest_as_json():
    cfg = load_config(None, ["data.shards=/d", "task.estimator_kwargs={n_critic: 2}"])
    flat = flat_config(cfg)
    assert flat["train.steps"] == 1000 and flat["data.shards"] == "/d" and flat["train.use_gpu"] == "null"
    assert flat["task.estimator_kwargs.n_critic"] == 2 and flat["model.kwargs"] == "{}"


def test_resume_continues_the_same_mlflow_run_and_a_failure_is_recorded(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    run = tmp_path / "run"
    write_checkpoint(run, make_config("infomax", tmp_path / "unused"), step=2)
    (run / "config.yaml").write_text("run: {name: t}\n")
    metrics = run / "metrics.jsonl"
    cfg = load_config(None, ["data.shards=/d", f"track.mlflow_uri={uri}", "train.steps=4"])

    first = Tracking(cfg, run, metrics)
    (log,) = first.listeners()
    for step in (1, 2):
        record = {"step": step, "mi": 0.1 * step, "eta/rank0": 0.5, "samples_per_s": 10.0, WALL_TIME: 1000.0 + step}
        log(record)
        metrics.open("a").write(json.dumps(record) + "\n")
    first.finish(succeeded=False)  # the driver died or training stopped
    run_id = (run / MLFLOW_RUN_ID_FILE).read_text()
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "FAILED"
    assert final_metrics(metrics) == {"final/mi": pytest.approx(0.2), "final/eta/rank0": 0.5, "final/samples_per_s": 10.0}

    resumed = Tracking(load_config(None, ["data.shards=/d", f"track.mlflow_uri={uri}", "train.steps=8"]), run, metrics)
    resumed.listeners()[0]({"step": 3, "mi": 0.3, "samples_per_s": 10.0})
    resumed.finish(succeeded=True)
    (only,) = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert only.info.run_id == run_id and only.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "mi")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.timestamp for m in history[:2]] == [1_001_000, 1_002_000]  # rank 0's clock, in ms
    assert not client.get_metric_history(run_id, WALL_TIME)  # a timestamp, not a metric
    assert only.data.params["train.steps"] == "4"  # MLflow params never change; the first value stays
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "encoder.safetensors"}


def test_an_unusable_tracking_uri_is_one_line_before_ray_starts(tmp_path, monkeypatch, capsys):
    import ray

    from pretrain.__main__ import main

    from tests.support.shards import synthetic_shards

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    shards = synthetic_shards(tmp_path / "shards", 32, {"train": 64})  # a batch of 32 for each of 2 ranks
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the store should be")
    config = Path(__file__).resolve().parents[2] / "configs" / "demo_infomax_eta.yaml"
    ray_was_up = ray.is_initialized()
    assert main(["--config", str(config), f"data.shards={shards}", f"run.root={tmp_path / 'runs'}",
                 f"track.mlflow_uri=file:{blocked}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tracking error: track.mlflow_uri=file:{blocked}: cannot start an MLflow run: ")
    assert err.count("\n") == 1 and ray.is_initialized() == ray_was_up
