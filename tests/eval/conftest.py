"""Tiny synthetic shard sets and checkpoints written through the project's own writers.

`synthetic` images: class c is a flat colour (one of 3) plus pixel noise, so a probe on any
reasonable features separates the classes and a mix-up of features and labels shows as chance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pretrain.checkpoint import capture_rng, save_checkpoint
from pretrain.run_dir import checkpoint_dir_name
from pretrain.models import build_encoder
from tests.support.shards import synthetic_shards



class TinyTask(nn.Module):
    """Stands in for a pretraining task: the encoder plus one head, as save_checkpoint expects."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, 4)


def write_checkpoint(run_dir: Path, config: dict, step: int = 5, seed: int = 0) -> Path:
    """Save a checkpoint of a freshly built encoder (a few BN-stat updates so buffers are not defaults)."""
    torch.manual_seed(seed)
    model = config["model"]
    kwargs = dict(model.get("kwargs") or {})
    if model.get("depth") is not None:
        kwargs["depth"] = model["depth"]
    encoder = build_encoder(model["encoder"], **kwargs)
    side = kwargs.get("image_size", 32)
    encoder.train()
    with torch.no_grad():
        encoder(torch.randn(4, 3, side, side))  # moves batch-norm running statistics off their defaults
    task = TinyTask(encoder)
    opt = torch.optim.Adam(task.parameters(), lr=1e-4)
    return save_checkpoint(run_dir / checkpoint_dir_name(step), step=step, config=config, task=task, optimizer=opt,
                           eta_optimizer=None, rng=[capture_rng()], data_position=[0], permutations=None)


def make_config(kind: str, shards: Path, estimator: str | None = "eta-mine", image_size: int = 32) -> dict:
    return {
        "run": {"name": "test", "root": "runs", "storage_path": None, "seed": 0},
        "data": {"shards": str(shards), "split": "train"},
        "model": {"encoder": "dcgan", "depth": 2, "kwargs": {"image_size": image_size}},
        "task": {"kind": kind, "estimator": estimator, "estimator_kwargs": {}, "kwargs": {}},
    }


@pytest.fixture(scope="session")
def eval_world(tmp_path_factory):
    """Shards and checkpoints shared by the eval tests: an InfoMax run (32×32) and a jigsaw run
    (DCGAN on 64×64 patches, so the 9-patch path runs fast on a CPU)."""
    root = tmp_path_factory.mktemp("eval_world")
    small = synthetic_shards(root / "synthetic32", 32, {"train": 60, "test": 30})
    big = synthetic_shards(root / "synthetic96", 96, {"train": 12, "test": 6}, seed=1, shard_size=6)
    infomax_run = root / "runs" / "infomax-eta"
    write_checkpoint(infomax_run, make_config("infomax", small), step=3, seed=1)
    write_checkpoint(infomax_run, make_config("infomax", small), step=6, seed=2)  # the latest: run dirs load this one
    jigsaw_run = root / "runs" / "jigsaw-ce"
    write_checkpoint(jigsaw_run, make_config("jigsaw-ce", big, estimator=None, image_size=64), step=4)
    return {"root": root, "small": small, "big": big, "infomax_run": infomax_run, "jigsaw_run": jigsaw_run}
