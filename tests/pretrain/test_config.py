"""Config: defaults <- YAML <- key=value; every error is one line naming the key, before Ray."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrain.config import ConfigError, load_config, to_plain, validate
from tests.support.shards import folder_shards

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A tiny folder-built shard directory (4 images, 2 classes)."""
    out = folder_shards(tmp_path_factory.mktemp("cfg"), 4, n_classes=2, size=40, shard_size=1000)
    return out


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_paper_settings():
    cfg = load_config()
    assert (cfg.optim.lr, cfg.optim.eta_lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.weight_decay) == (1e-4, 1e-2, 0.9, 0.999, 0.0)
    assert (cfg.data.images_per_batch, cfg.data.perms_per_image, cfg.data.num_permutations) == (10, 16, 100)
    assert cfg.model.encoder == "resnet50" and cfg.run.root == os.path.abspath("runs")


def test_yaml_then_command_line_overrides(tmp_path):
    p = write(tmp_path, "train:\n  steps: 50\n  report_every: 5\nmodel:\n  encoder: dcgan\n  depth: 2\n")
    cfg = load_config(p, ["train.steps=70", "task.estimator_kwargs.n_critic=3", "model.kwargs.image_size=64"])
    assert cfg.train.steps == 70 and cfg.train.report_every == 5 and cfg.model.depth == 2
    assert cfg.task.estimator_kwargs == {"n_critic": 3} and cfg.model.kwargs == {"image_size": 64}
    plain = to_plain(cfg)
    assert isinstance(plain["task"]["estimator_kwargs"], dict) and plain["train"]["steps"] == 70


@pytest.mark.parametrize("text, overrides, match", [
    ("train:\n  stpes: 5\n", [], "train.stpes"),
    ("train:\n  steps: many\n", [], "train.steps"),
    ("", ["optim.lr=fast"], "optim.lr"),
    ("", ["nosuch.key=1"], "nosuch"),
    ("", ["train.steps"], "not key=value"),
    ("train: [1, 2\n", [], "cannot parse YAML"),
    ("- train\n- steps: 5\n", [], "top level is a ListConfig, not a mapping"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(write(tmp_path, text), overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, match", [
    ([], "data.shards is required"),
    (["data.shards={shards}", "task.kind=jigsaw"], "task.kind 'jigsaw' unknown"),
    (["data.shards={shards}", "task.kind=jigsaw-mi"], "task.estimator is required"),
    (["data.shards={shards}", "task.kind=jigsaw-mi", "task.estimator=eta_mine"], "task.estimator 'eta_mine' unknown"),
    (["data.shards={shards}", "task.estimator=eta-mine"], "must be null for task.kind=jigsaw-ce"),
    (["data.shards={shards}", "model.encoder=resnet_500"], "model.encoder 'resnet_500'"),
    (["data.shards={shards}", "train.checkpoint_every=15", "train.report_every=10"], "multiple of"),
    (["data.shards={shards}", "train.steps=0"], "train.steps must be >= 1"),
    (["data.shards={shards}", "train.gpus_per_worker=0"], "train.gpus_per_worker must be a fraction in"),
    (["data.shards={shards}", "train.gpus_per_worker=1.5"], r"a whole number, got 1\.5"),
    (["data.shards={shards}", "data.perms_per_image=20", "data.num_permutations=10"], "exceeds"),
    (["data.shards={shards}", "data.split=val"], "split 'val' not in"),
    (["data.shards=/no/such/dir"], "no manifest.json in /no/such/dir"),
    (["data.shards={shards}", "task.kind=supervised"], "task.kwargs.num_classes is None, but .* has 2 classes"),
    (["data.shards={shards}", "task.kind=supervised", "task.kwargs.num_classes=10"], "set task.kwargs.num_classes=2"),
])
def test_validate_rejects(shards, overrides, match):
    cfg = load_config(None, [o.format(shards=shards) for o in overrides])
    with pytest.raises(ConfigError, match=match) as info:
        validate(cfg)
    assert "\n" not in str(info.value)


def test_every_shipped_config_loads_and_validates(shards):
    names = {p.name for p in CONFIGS}
    for required in ("jigsaw_ce_imagenet10.yaml", "jigsaw_dv_imagenet10.yaml", "jigsaw_eta_imagenet10.yaml",
                     "infomax_dv_cifar10.yaml", "infomax_eta_cifar10.yaml", "infomax_eta_stl10.yaml",
                     "demo_infomax_eta.yaml", "demo_infomax_dv.yaml", "demo_jigsaw_eta.yaml",
                     "infomax_dv_stl10.yaml", "supervised_cifar10.yaml", "supervised_stl10.yaml"):
        assert required in names
    for path in CONFIGS:
        # the tiny shards hold train only, with 2 classes
        labels = ["task.kwargs.num_classes=2"] if "supervised" in path.name else []
        cfg = load_config(path, [f"data.shards={shards}", "data.split=train", *labels])
        validate(cfg)
        assert cfg.run.name == path.stem, path.name


def test_config_errors_exit_before_ray_is_imported(tmp_path, shards):
    """`python -m pretrain` with a bad config prints one line and exits 2 without touching Ray."""
    bad = write(tmp_path, f"data:\n  shards: {shards}\ntrain:\n  stepz: 3\n")
    code = ("import sys; from pretrain.__main__ import main; rc = main(sys.argv[1:]); "
            "assert 'ray' not in sys.modules, 'ray was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(bad)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.stepz" in lines[0], proc.stderr



def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    """Ray Train workers run elsewhere: paths given relative to the caller's directory are resolved."""
    from pretrain.config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.shards=shards/digits", "run.root=runs", "run.storage_path=s3://bucket/x"])
    assert cfg.data.shards == str(tmp_path / "shards" / "digits") and cfg.run.root == str(tmp_path / "runs")
    assert cfg.run.storage_path == "s3://bucket/x"


@pytest.mark.parametrize("config", ["jigsaw_ce_imagenet10", "jigsaw_eta_imagenet10", "demo_jigsaw_eta"])
def test_every_seed_trains_on_the_one_committed_permutation_set(config, shards):
    from data_prep.jigsaw import permutation_set, permutations_sha256
    from pretrain.train import permutations_of

    committed, digest = permutation_set(None, 100)
    for seed in range(4):
        cfg = load_config(REPO / "configs" / f"{config}.yaml", [f"run.seed={seed}", f"data.shards={shards}"])
        validate(cfg)
        perms = permutations_of(cfg)
        assert (perms.numpy() == committed).all() and permutations_sha256(perms.numpy()) == digest


def test_another_permutation_set_by_path(tmp_path, shards):
    from data_prep.jigsaw import max_hamming_permutations
    from pretrain.train import permutations_of

    other = max_hamming_permutations(20, seed=5)
    np.save(tmp_path / "published.npy", other)
    base = [f"data.shards={shards}", "data.num_permutations=20", "data.perms_per_image=4"]
    cfg = load_config(REPO / "configs" / "demo_jigsaw_eta.yaml", base + [f"data.permutations={tmp_path / 'published.npy'}"])
    validate(cfg)
    assert (permutations_of(cfg).numpy() == other).all()
    cfg = load_config(REPO / "configs" / "demo_jigsaw_eta.yaml", base + [f"data.permutations={tmp_path / 'missing.npy'}"])
    with pytest.raises(ConfigError, match="data.permutations: permutation set .*missing.npy does not exist"):
        validate(cfg)


def test_ranks_sharing_a_gpu_get_a_gloo_process_group():
    """NCCL refuses two ranks on one device: ranks on a fraction of a GPU get gloo, others Ray's choice."""
    from pretrain.train import process_group_config

    for gpus, use_gpu, backend in ((0.5, True, "gloo"), (1.0, True, None), (2.0, True, None), (0.5, False, None)):
        cfg = load_config(None, ["data.shards=/nonexistent", f"train.gpus_per_worker={gpus}"])
        assert process_group_config(cfg, use_gpu).backend == backend, (gpus, use_gpu)
