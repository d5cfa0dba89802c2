"""The Ray Train loop end to end on tiny shards, 2 workers, on the test session's Ray (``ray_session``).

A run whose worker crashed, restarted by Ray from its checkpoint, must reach the weights, η and
optimiser state of the uninterrupted run of its config (``infomax_reference``, tests/conftest.py);
a jigsaw run logs η from both ranks and a puzzle grid; a diverging run stops with a clear message and keeps
its last good checkpoint. (Two ranks with batch B against one with 2B: ``test_distributed_bounds.py``.)
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain import checkpoint as ck
from pretrain.config import load_config
from pretrain.run_dir import CRASH_MARKER
from console.progress import WALL_TIME
from tests.support.run_states import assert_same_state, infomax_overrides, read_metrics, reference_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.ray]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """sklearn's 8x8 digits, scaled to 32x32 RGB, 30 per class, through the folder builder."""
    from sklearn.datasets import load_digits

    from data_prep.__main__ import main as data_prep_main

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    for label in range(10):
        (root / "src" / str(label)).mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(d.target == label)[:30]):
            img = np.kron(d.images[idx] * (255 / 16), np.ones((4, 4))).astype(np.uint8)
            Image.fromarray(np.stack([img] * 3, -1)).save(root / "src" / str(label) / f"{i}.png")
    out = root / "shards"
    assert data_prep_main(["folder", "--src", str(root / "src"), "--out", str(out), "--format", "png",
                           "--shard-size", "75", "--workers", "1", "--no-progress"]) == 0
    return out


def infomax_cfg(shards, root, *extra):
    return load_config(None, infomax_overrides(shards, root, *extra))


def test_infomax_worker_crash_restarts_the_group_to_the_uninterrupted_state(ray_session, infomax_reference,
                                                                             digits_shards, tmp_path, capfd):
    """Both runs carry the online probe: its head and Adam restart exactly too, and every report and
    progress line shows its top-1. (A driver's ``--resume`` to the uninterrupted run's end:
    ``test_train_s3.py``, from a bucket, and ``test_preemption.py``, from a local run directory.)"""
    from console.progress import LINE_RE
    from pretrain.train import launch

    plain = infomax_reference  # tests/conftest.py: 12 uninterrupted steps, checkpoints at 4, 8, 12
    reference = ck.load_checkpoint(plain)
    assert reference["step"] == 12
    # 12 steps of 5 batches an epoch: rank positions are in epoch 2
    assert reference["data_position"] == [{"epoch": 2, "batch": 2}, {"epoch": 2, "batch": 2}]
    metrics = read_metrics(plain)
    assert [m["step"] for m in metrics] == [4, 8, 12]
    for m in metrics:
        assert m["eta/rank0"] == m["eta/rank1"] == m["eta"]
        for key in ("loss", "mi", "normaliser", "lr/main", "lr/eta", "samples_per_s", "data_wait_fraction"):
            assert np.isfinite(m[key]), key
        assert 0.0 <= m["online_probe/top1"] <= 100.0 and m["online_probe/loss"] > 0
    assert reference["online_probe"]["optimizer"]["state"][0]["step"] == 12
    assert metrics[-1]["eta"] != 0.0
    assert list((plain / "tb").glob("events.out.tfevents.*"))

    # a worker dies at step 6 (after the checkpoint at 4 and the report at 6): Ray restarts the group
    # from step 4, so step 6 is reported again; metrics.jsonl keeps the later record. The driver stops
    # after 8 steps, where the uninterrupted run was at its checkpoint 8.
    capfd.readouterr()
    crashed = launch(load_config(None, reference_overrides(digits_shards, tmp_path, "train.crash_at_step=6",
                                                           "train.report_every=2", "train.steps=8"))).run_dir
    assert (crashed / CRASH_MARKER).read_text() == "6"
    assert_same_state(ck.load_checkpoint(crashed), ck.load_checkpoint(plain / "checkpoint_000000008"))
    assert [m["step"] for m in read_metrics(crashed)] == [2, 4, 6, 8]
    lines = [LINE_RE.match(line) for line in capfd.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) >= 4 and all(m and m["probe_top1"] is not None for m in lines), lines


def test_jigsaw_two_workers_logs_eta_and_puzzles(ray_session, digits, tmp_path, monkeypatch, capfd):
    """Also: metrics every step but Ray reports only with the 2 checkpoints, and the controller is
    started with the config's train.controller_poll_s (the session's environment says 0.1). Rank 0
    writes the checkpoints into the run directory itself (Ray copies nothing) and Ray still rotates
    them (train.keep_checkpoints=1). The config is read as one worker's run (optim.lr_scaling=linear):
    8 steps become 4 on 2 workers, at twice the lr after a 2-step warm-up."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.constants import get_env_vars_to_propagate
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.train import CONTROLLER_POLL_ENV, launch

    controller_env = []
    fit = TorchTrainer.fit

    def recording_fit(self):  # Ray builds the controller actor's runtime env from this, in fit()
        controller_env.append(get_env_vars_to_propagate())
        return fit(self)

    monkeypatch.setattr(TorchTrainer, "fit", recording_fit)
    cfg = load_config(None, [
        f"data.shards={digits}", f"run.root={tmp_path}", "run.name=jig", "task.kind=jigsaw-mi",
        "task.estimator=eta-mine", "model.encoder=dcgan", "model.depth=4", "model.kwargs.image_size=64",
        "data.images_per_batch=2", "data.perms_per_image=4", "data.num_permutations=10",
        "train.num_workers=2", "train.steps=8", "train.report_every=1", "train.checkpoint_every=2",
        "train.controller_poll_s=0.25", "train.keep_checkpoints=1",
        "optim.lr=1e-3", "optim.lr_scaling=linear", "optim.warmup_steps=2"])
    out = launch(cfg)
    run = out.run_dir
    assert controller_env[0][CONTROLLER_POLL_ENV] == "0.25"
    assert os.environ[CONTROLLER_POLL_ENV] == "0.1"  # the driver's own setting is back
    reported = [Path(c.path) for c, _ in out.result.best_checkpoints]
    assert reported == [Path(run) / "checkpoint_000000004"]
    assert sorted(p.name for p in Path(run).glob("checkpoint_0*")) == ["checkpoint_000000004"]
    payload = ck.load_checkpoint(run)
    assert payload["permutations"].shape == (10, 9)
    assert torch.equal(payload["permutations"].sort(dim=1).values, torch.arange(9).expand(10, 9))
    m = read_metrics(run)
    assert [x["step"] for x in m] == [1, 2, 3, 4] and all(x["eta/rank0"] == x["eta/rank1"] for x in m)
    assert [x["lr/main"] for x in m] == pytest.approx([1e-3, 2e-3, 2e-3, 2e-3])
    times = [x[WALL_TIME] for x in m]  # rank 0's clock at each report: the driver's ETA reads it
    assert times == sorted(times) and time.time() - 600 < times[0]
    from console.progress import LINE_RE

    shown = [LINE_RE.match(line) for line in capfd.readouterr().out.splitlines() if line.startswith("step ")]
    assert [int(x["step"]) for x in shown] == [1, 2, 3, 4]
    for line, rec in zip(shown, m):  # images/s, not puzzles/s: 4 permutations of each image
        assert float(line["images_per_s"]) == pytest.approx(rec["samples_per_s"] / 4, abs=0.1)
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0}).Reload()
    assert {"loss", "mi", "eta", "normaliser", "eta/rank1", "samples_per_s", "data_wait_fraction",
            "lr/main", "lr/eta"} <= set(events.Tags()["scalars"])
    assert "inputs" in events.Tags()["images"]
    encoder, config = ck.load_encoder(run)
    assert config["task"]["kind"] == "jigsaw-mi" and encoder.feature_dim == 512 * 4 * 4


def test_nonfinite_loss_stops_with_the_last_good_checkpoint(ray_session, digits, tmp_path):
    from pretrain.train import TrainingStopped, launch

    cfg = infomax_cfg(digits, tmp_path, "train.num_workers=1", "optim.lr=1e12", "optim.eta_lr=1e12",
                      "train.steps=40", "train.report_every=1", "train.checkpoint_every=1")
    with pytest.raises(TrainingStopped, match=r"non-finite loss .* at step \d+: stopped before applying it; "
                                              r"last good checkpoint: checkpoint_\d+") as info:
        launch(cfg)
    run = next(tmp_path.glob("im-*"))
    info_file = json.loads((run / "nonfinite.json").read_text())
    payload = ck.load_checkpoint(run)
    assert payload["step"] == info_file["step"] and str(info.value).count("\n") == 0
    for v in list(payload["encoder"].values()) + list(payload["task"].values()):
        assert torch.isfinite(v.float()).all()


def test_loss_decreases_on_digits_with_readable_progress_and_tracking(ray_session, digits, tmp_path, capfd,
                                                                      monkeypatch):
    """InfoMax on digits through `python -m pretrain`, as a user runs it: the η-MINE estimate rises;
    the output has the run directory at the start, one readable progress line per report (parsed
    back here) and the summary at the end; TensorBoard gets the config and the hparams with final
    metrics; MLflow (a file store) gets the params, every report's metrics and the exported encoder."""
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.__main__ import main as cli
    from console.progress import ETA_PENDING, LINE_RE

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = tmp_path / "infomax.yaml"
    OmegaConf.save(infomax_cfg(digits, tmp_path / "runs"), config)
    uri = f"file:{tmp_path / 'mlruns'}"
    assert cli(["--config", str(config), "train.num_workers=1", "train.steps=60", "train.report_every=10",
                "train.checkpoint_every=60", "data.batches_per_epoch=null",
                f"track.mlflow_uri={uri}", "track.mlflow_experiment=t"]) == 0
    out = capfd.readouterr().out.splitlines()
    run = next((tmp_path / "runs").glob("im-*"))
    assert out[0] == f"run directory: {run}" and out[-5].startswith("done: step 60 in "), out
    assert out[-4:-1] == [f"run directory: {run}", f"latest checkpoint: {run}/checkpoint_000000060",
                          f"curves: {run}/curves.png"], out
    assert out[-1].startswith(f"next, a linear probe of the encoder: python -m eval.linear checkpoint={run} data="), out
    lines = [LINE_RE.match(line) for line in out if line.startswith("step ")]
    assert all(lines) and [int(m["step"]) for m in lines] == [10, 20, 30, 40, 50, 60], out
    recorded = read_metrics(run)
    assert recorded[-1]["loss"] < recorded[0]["loss"] - 0.2, [x["loss"] for x in recorded]
    assert recorded[-1]["mi"] > 0.2
    for m, rec in zip(lines, recorded):
        assert int(m["total"]) == 60 and float(m["loss"]) == pytest.approx(rec["loss"], abs=1e-4)
        assert float(m["mi"]) == pytest.approx(rec["mi"], abs=1e-3)
        assert float(m["eta"]) == pytest.approx(rec["eta"], abs=1e-4)
        assert float(m["images_per_s"]) == pytest.approx(rec["samples_per_s"], abs=0.1)
    assert lines[0]["eta_time"] == ETA_PENDING and lines[-1]["eta_time"] == "0:00:00"
    assert not any("TrainingReport(" in line for line in out)

    events = EventAccumulator(str(run / "tb")).Reload()
    assert "config/text_summary" in events.Tags()["tensors"]
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    steps: 60" in config_text and "mlflow_experiment: t" in config_text
    assert "_hparams_/session_start_info" in events.summary_metadata
    assert events.Scalars("final/mi")[0].value == pytest.approx(recorded[-1]["mi"])

    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == run.name
    assert found.data.params["train.steps"] == "60" and found.data.params["task.estimator"] == "eta-mine"
    history = client.get_metric_history(found.info.run_id, "mi")
    assert [h.step for h in history] == [10, 20, 30, 40, 50, 60]
    assert [h.value for h in history] == pytest.approx([r["mi"] for r in recorded])
    assert client.get_metric_history(found.info.run_id, "eta_rank0")[-1].value == recorded[-1]["eta/rank0"]
    artifacts = tmp_path / "artifacts"
    client.download_artifacts(found.info.run_id, "encoder.safetensors", str(artifacts))
    exported = load_file(str(artifacts / "encoder.safetensors"))
    final = ck.load_checkpoint(run)["encoder"]
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
