"""Checkpoint format: round trip of every part, locating the latest one, load_encoder, bad inputs."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pretrain import checkpoint as ck
from pretrain.config import load_config, to_plain
from pretrain.models import build_encoder
from pretrain.run_dir import CONFIG_FILE, checkpoint_dir_name
from pretrain.tasks import build_task


def make_task(seed=0):
    torch.manual_seed(seed)
    enc = build_encoder("dcgan", depth=2)
    return build_task("infomax", enc, estimator="eta-mine", hidden_dim=32, embed_dim=16)


def trained_state(seed=0):
    """A task after two Adam steps (so the optimiser has moments and η has moved)."""
    task = make_task(seed)
    main = torch.optim.Adam(task.main_parameters(), lr=1e-3)
    eta = torch.optim.Adam(task.eta_parameters(), lr=1e-2)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    for _ in range(2):
        loss = task({"images": x})["loss"]
        main.zero_grad(), eta.zero_grad()
        loss.backward()
        main.step(), eta.step()
    return task, main, eta


def config_dict(**over):
    cfg = load_config(None, ["data.shards=/nowhere", "model.encoder=dcgan", "model.depth=2",
                             "task.kind=infomax", "task.estimator=eta-mine"]
                      + [f"{k}={v}" for k, v in over.items()])
    return to_plain(cfg)


def save(directory, task, main, eta, step=5, config=None, perms=None):
    return ck.save_checkpoint(directory, step=step, config=config or config_dict(), task=task,
                              optimizer=main, eta_optimizer=eta, rng=[ck.capture_rng()],
                              data_position=[{"epoch": 1, "batch": 3}], permutations=perms)


def test_round_trip_restores_every_part(tmp_path):
    task, main, eta = trained_state()
    perms = torch.stack([torch.randperm(9) for _ in range(100)])
    save(tmp_path / "checkpoint_000000005", task, main, eta, perms=perms)
    payload = ck.load_checkpoint(tmp_path)
    assert payload["format"] == ck.FORMAT and payload["step"] == 5
    assert payload["data_position"] == [{"epoch": 1, "batch": 3}]
    assert torch.equal(payload["permutations"], perms)
    assert payload["config"]["model"]["encoder"] == "dcgan"
    assert "eta" in "".join(payload["task"]) and not any(k.startswith("encoder.") for k in payload["task"])

    task2 = make_task(seed=1)
    main2 = torch.optim.Adam(task2.main_parameters(), lr=1e-3)
    eta2 = torch.optim.Adam(task2.eta_parameters(), lr=1e-2)
    ck.load_task_state(task2, payload["encoder"], payload["task"])
    main2.load_state_dict(payload["optimizer"]["main"])
    eta2.load_state_dict(payload["optimizer"]["eta"])
    for (k, a), (_, b) in zip(task.state_dict().items(), task2.state_dict().items()):
        assert torch.equal(a, b), k
    assert task2.estimator.eta.item() == task.estimator.eta.item() != 0.0
    for s1, s2 in zip(main.state.values(), main2.state.values()):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
    assert eta2.state_dict()["state"][0]["step"] == eta.state_dict()["state"][0]["step"]


def test_rng_state_round_trip():
    state = ck.capture_rng()
    draws = (torch.rand(3), np.random.rand(2), random.random())
    ck.restore_rng(state)
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_latest_checkpoint_of_a_run_dir_and_load_encoder(tmp_path):
    task, main, eta = trained_state()
    save(tmp_path / checkpoint_dir_name(4), task, main, eta, step=4)
    with torch.no_grad():
        for p in task.encoder.parameters():
            p.add_(1.0)
    save(tmp_path / checkpoint_dir_name(10), task, main, eta, step=10)
    (tmp_path / "tb").mkdir()  # other things in a run directory are ignored
    for path in (tmp_path, tmp_path / checkpoint_dir_name(10),
                 tmp_path / checkpoint_dir_name(10) / ck.CHECKPOINT_FILE):
        encoder, config = ck.load_encoder(path)
        assert config["task"]["kind"] == "infomax"
        assert not encoder.training
        for (k, a), (_, b) in zip(encoder.state_dict().items(), task.encoder.state_dict().items()):
            assert torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    assert encoder(x).shape == (2, encoder.feature_dim)
    assert ck.load_checkpoint(tmp_path / checkpoint_dir_name(4))["step"] == 4


def test_run_dir_with_separate_storage(tmp_path):
    run_dir, storage = tmp_path / "runs" / "r1", tmp_path / "storage"
    run_dir.mkdir(parents=True)
    cfg = config_dict(**{"run.storage_path": str(storage)})
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    task, main, eta = trained_state()
    save(storage / "r1" / checkpoint_dir_name(3), task, main, eta, step=3, config=cfg)
    assert ck.load_checkpoint(run_dir)["step"] == 3


def test_missing_and_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load_encoder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        ck.load_encoder(tmp_path)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read checkpoint") as info:
        ck.load_checkpoint(bad)
    assert "\n" not in str(info.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="missing keys"):
        ck.load_checkpoint(other)
    task, main, eta = trained_state()
    path = save(tmp_path / "c", task, main, eta)
    payload = torch.load(path, weights_only=True)
    payload["format"] = 99
    torch.save(payload, path)
    (path.parent / ck.CHECKSUM_FILE).unlink()  # a lone file is read as it is (with a checksum it would be refused)
    with pytest.raises(ValueError, match="format 99"):
        ck.load_checkpoint(path)


def test_encoder_that_does_not_fit_its_config(tmp_path):
    task, main, eta = trained_state()
    save(tmp_path / "c", task, main, eta, config=config_dict(**{"model.depth": 3}))
    with pytest.raises(ValueError, match="do not fit model.encoder"):
        ck.load_encoder(tmp_path / "c")


@pytest.mark.parametrize("where", ["local", "not on this machine", "bucket"])
def test_rank0_writes_a_local_checkpoint_in_place_and_ray_only_records_it(tmp_path, monkeypatch, where):
    """The controller's local folder (Ray's storage marker in it): the checkpoint is written there
    once and reported with NO_UPLOAD (Ray copies nothing); a stale half-written one is replaced. A bucket (None), or a node that has a folder of that name
    but not the controller's (no shared disk, no marker): a temporary folder that Ray uploads (and
    whose unreachable destination Ray then names)."""
    import ray.train
    from ray.train import CheckpointUploadMode
    from ray.train.v2._internal.constants import VALIDATE_STORAGE_MARKER_FILENAME

    from pretrain.config import from_plain
    from pretrain.train import report_with_checkpoint

    seen = []

    def fake_report(metrics, checkpoint=None, checkpoint_dir_name=None, **kwargs):
        files = sorted(p.name for p in Path(checkpoint.path).iterdir())
        seen.append((Path(checkpoint.path), checkpoint_dir_name, kwargs.get("checkpoint_upload_mode"), files))

    monkeypatch.setattr(ray.train, "report", fake_report)
    home = None if where == "bucket" else tmp_path / "run"
    name = checkpoint_dir_name(7)
    if home is not None:
        (home / name).mkdir(parents=True)  # an earlier attempt's half-written checkpoint
        (home / name / ck.CHECKPOINT_FILE).write_bytes(b"half")
        if where == "local":
            (home / VALIDATE_STORAGE_MARKER_FILENAME).touch()
    task, main, eta = trained_state()
    assert report_with_checkpoint(from_plain(config_dict()), None if home is None else str(home), {"step": 7},
                                  7, task, main, eta, {"epoch": 0, "batch": 7}, [ck.capture_rng()], None) == name
    [(path, dir_name, mode, files)] = seen
    assert dir_name == name and files == [ck.CHECKPOINT_FILE, ck.CHECKSUM_FILE]
    if where == "local":
        assert path == home / name and mode == CheckpointUploadMode.NO_UPLOAD
        assert ck.checksum_problem(path / ck.CHECKPOINT_FILE) is None  # complete, where Ray will look
        assert sorted(p.name for p in home.iterdir()) == sorted([name, VALIDATE_STORAGE_MARKER_FILENAME])
    else:
        assert mode in (None, CheckpointUploadMode.SYNC) and not path.exists()  # a temporary folder, gone
        if home is not None:
            assert (home / name / ck.CHECKPOINT_FILE).read_bytes() == b"half"  # not this node's to touch


def test_a_restart_takes_rays_checkpoint_only_when_newer_and_intact(tmp_path):
    from ray.train import Checkpoint

    from pretrain.train import checkpoint_to_restore

    task, main, eta = trained_state()
    old, new = tmp_path / checkpoint_dir_name(4), tmp_path / checkpoint_dir_name(8)
    save(old, task, main, eta, step=4)
    save(new, task, main, eta, step=8)
    start = {"path": str(old), "step": 4}
    assert checkpoint_to_restore(None, start) == str(old)
    assert checkpoint_to_restore(Checkpoint.from_directory(str(old)), start) == str(old)  # not newer
    taken = checkpoint_to_restore(Checkpoint.from_directory(str(new)), start)
    assert Path(taken.path) == new
    with open(new / ck.CHECKPOINT_FILE, "r+b") as f:  # damaged after Ray recorded it
        f.truncate(100)
    assert checkpoint_to_restore(Checkpoint.from_directory(str(new)), start) == str(old)
