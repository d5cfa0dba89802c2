"""Pretraining inputs that are data, not instructions: config files that reach for the environment,
values the types let through, checkpoints whose checksum matches but whose payload is not one."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from pretrain import checkpoint as ck
from pretrain.__main__ import main as cli
from pretrain.run_dir import CONFIG_FILE, checkpoint_dir_name
from storage.files import sha256_file
from tests.support.shards import folder_shards

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_infomax_eta.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """16 random 32×32 PNGs in 2 classes, 2 shards."""
    return folder_shards(tmp_path_factory.mktemp("sec"), 16, n_classes=2, size=32, shard_size=8)


@pytest.fixture(autouse=True)
def _keep_ray_env(monkeypatch):
    """`python -m pretrain` sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for a local Ray; in-process calls
    must not leave it to later tests (as in test_faults.py)."""
    from pretrain.preflight import LOOPBACK_ENV

    monkeypatch.setenv(LOOPBACK_ENV, "restored")
    monkeypatch.delenv(LOOPBACK_ENV)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


@pytest.mark.parametrize("text", [
    "run:\n  name: ${oc.env:PRETRAIN_TEST_SECRET}\n",
    "run:\n  name: run-${oc.env:PRETRAIN_TEST_SECRET}\n",
    "model:\n  kwargs:\n    tags: [a, '${oc.env:PRETRAIN_TEST_SECRET}']\n",
])
def test_a_config_file_cannot_copy_the_environment(tmp_path, monkeypatch, capsys, text):
    """A resolver in a config file is refused before anything resolves it: the secret reaches no
    output and no file (no run directory is made)."""
    monkeypatch.setenv("PRETRAIN_TEST_SECRET", "s3cr3t-value-42")
    config = tmp_path / "c.yaml"
    config.write_text(text)
    root = tmp_path / "runs"
    for extra in ([], ["--print-config"], ["--plan"]):
        assert cli(["--config", str(config), *extra, "data.shards=/nonexistent", f"run.root={root}"]) == 2
        err = one_line_error(capsys)
        assert "is an interpolation" in err and "s3cr3t" not in err
    assert cli(["--config", str(tmp_path / "c.yaml"), "run.name=${oc.env:PRETRAIN_TEST_SECRET}",
                "data.shards=/nonexistent"]) == 2
    assert "s3cr3t" not in one_line_error(capsys)
    assert not root.exists()


@pytest.mark.parametrize("override, key", [
    ("optim.lr=nan", "optim.lr"), ("optim.lr=-1", "optim.lr"), ("optim.lr=0", "optim.lr"),
    ("optim.lr=inf", "optim.lr"), ("optim.eta_lr=inf", "optim.eta_lr"), ("optim.eta_lr=nan", "optim.eta_lr"),
    ("optim.beta1=2", "optim.beta1"), ("optim.beta2=1", "optim.beta2"), ("optim.beta1=-0.1", "optim.beta1"),
    ("optim.weight_decay=-1", "optim.weight_decay"), ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("data.loader_workers=-1", "data.loader_workers"), ("train.resource_wait_s=-1", "train.resource_wait_s"),
    ("train.resource_wait_s=nan", "train.resource_wait_s"), ("train.controller_poll_s=nan", "train.controller_poll_s"),
    ("train.upload_every_s=-2", "train.upload_every_s"), ("train.image_every=-1", "train.image_every"),
    ("data.batches_per_epoch=0", "data.batches_per_epoch"), ("train.crash_at_step=-1", "train.crash_at_step"),
])
def test_values_out_of_range_are_one_line_before_ray(tmp_path, capsys, override, key):
    """The same line with and without ``--plan``; nothing is created."""
    args = ["--config", str(tmp_path / "c.yaml"), "data.shards=/nonexistent", f"run.root={tmp_path / 'runs'}",
            "model.encoder=dcgan", override]
    (tmp_path / "c.yaml").write_text("run:\n  seed: 0\n")
    for extra in ([], ["--plan"]):
        assert cli([*extra, *args]) == 2
        err = one_line_error(capsys)
        assert err.startswith(f"config error: {key} must be a finite number"), err
    assert not (tmp_path / "runs").exists()


class _RunsCode:
    """A pickle that would create a file when unpickled by a loader that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _run_with_payload(run, shards, write_payload) -> None:
    """A run directory (a valid config) whose one checkpoint's checksum matches what ``write_payload`` wrote."""
    from omegaconf import OmegaConf

    from pretrain.config import load_config

    cfg = load_config(None, [f"data.shards={shards}", f"run.root={run.parent}", "task.kind=infomax",
                             "task.estimator=eta-mine", "model.encoder=dcgan", "model.depth=2", "data.batch_size=8"])
    d = run / checkpoint_dir_name(4)
    d.mkdir(parents=True)
    (run / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg))
    write_payload(d / ck.CHECKPOINT_FILE)
    (d / ck.CHECKSUM_FILE).write_text(f"{sha256_file(d / ck.CHECKPOINT_FILE)}  {ck.CHECKPOINT_FILE}\n")


@pytest.mark.parametrize("what", ["code", "no rng"])
def test_resume_from_a_checkpoint_that_verifies_but_cannot_load_is_one_line(shards, tmp_path, capsys, what):
    """A pickle that would run code (it is never run: weights_only) and a payload without ``rng``."""
    marker = tmp_path / "ran"
    if what == "code":
        write = lambda p: p.write_bytes(pickle.dumps({"rng": _RunsCode(marker)}))  # noqa: E731
    else:
        write = lambda p: torch.save({"format": ck.FORMAT, "step": 4, "config": {}}, p)  # noqa: E731
    run = tmp_path / "run"
    _run_with_payload(run, shards, write)
    assert cli(["--resume", str(run)]) == 2
    err = one_line_error(capsys)
    assert "checkpoint_000000004" in err and "is not a loadable pretraining checkpoint" in err, err
    assert ("'rng'" in err) == (what == "no rng")
    assert not marker.exists()


def test_a_checkpoint_cannot_make_timm_read_a_file(shards, tmp_path, capsys):
    """``model.kwargs`` of a checkpoint reach the encoder's constructor: only architecture options pass
    (timm would load ``checkpoint_path`` itself). Refused in one line by export and by evaluation's
    loader, and by pretrain's checks when a config names it."""
    from pretrain.export import main as export

    weights = tmp_path / "elsewhere.pth"
    torch.save({}, weights)
    config = {"model": {"encoder": "resnet18", "depth": None, "kwargs": {"checkpoint_path": str(weights)}}}
    ckpt = tmp_path / "run" / checkpoint_dir_name(4)
    ckpt.mkdir(parents=True)
    torch.save({"format": ck.FORMAT, "step": 4, "config": config, "encoder": {}, "task": {}}, ckpt / ck.CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="model.kwargs.checkpoint_path is not an option here") as info:
        ck.load_encoder(ckpt)
    assert "\n" not in str(info.value)
    assert export([str(ckpt), "--out", str(tmp_path / "enc.safetensors")]) == 2
    assert "model.kwargs.checkpoint_path is not an option here" in one_line_error(capsys)
    assert not (tmp_path / "enc.safetensors").exists()

    assert cli(["--config", str(REPO_CONFIG), f"data.shards={shards}", f"run.root={tmp_path / 'runs'}",
                "model.encoder=resnet18", "model.depth=null", f"model.kwargs.checkpoint_path={weights}"]) == 2
    assert "model.kwargs.checkpoint_path is not an option here" in one_line_error(capsys)
