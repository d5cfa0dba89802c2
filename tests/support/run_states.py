"""What the pretraining tests share: the small InfoMax run the Ray Train end-to-end tests
(``test_train_ray.py``, ``test_train_s3.py``) launch, its ``metrics.jsonl``, the check that two runs
(uninterrupted, or crashed and resumed) ended in exactly the same state, and the tiny task configs of
the one-process step tests (``test_gpu_path.py``, ``test_gpu_options.py``)."""
from __future__ import annotations

import json

import torch

import storage
from pretrain.config import load_config


# `python -m data_prep` arguments (less --out) of the digits shards the InfoMax runs read, locally
# (tests/conftest.py, ``digits_shards``) and in a bucket (test_train_s3.py): the same shards
DIGITS_ARGS = ["digits", "--shard-size", "400", "--workers", "1", "--no-progress"]


def infomax_overrides(shards: str, root: str, *extra: str) -> list[str]:
    """``key=value`` overrides of a 12-step, 2-worker InfoMax (η-MINE) run checkpointed every 4 steps."""
    return [f"data.shards={shards}", f"run.root={root}", "run.name=im",
            "task.kind=infomax", "task.estimator=eta-mine", "task.kwargs.hidden_dim=64", "task.kwargs.embed_dim=32",
            "model.encoder=dcgan", "model.depth=2", "data.batch_size=16", "data.batches_per_epoch=5",
            "optim.lr=1e-3", "train.num_workers=2", "train.steps=12", "train.report_every=4",
            "train.checkpoint_every=4", "train.max_failures=1", *extra]


def reference_overrides(shards: str, root: str, *extra: str) -> list[str]:
    """:func:`infomax_overrides` with ``train.online_probe``: the uninterrupted run the crash and resume
    tests compare with (``infomax_reference``, tests/conftest.py), and those tests' runs."""
    return infomax_overrides(shards, root, "train.online_probe=true", *extra)


def read_metrics(run_dir) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl`` (a local path or a bucket URL), one a report."""
    return [json.loads(line) for line in storage.read_text(f"{run_dir}/metrics.jsonl").splitlines()]


def same_nested(a, b) -> bool:
    """Nested state dicts equal, tensors bit for bit."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_nested(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_nested(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoint payloads hold the same step, weights, optimiser state (η's too), data position and
    online probe (its head and Adam, when the run has one)."""
    assert a["step"] == b["step"]
    for part in ("encoder", "task"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for name in ("main", "eta"):
        sa, sb = a["optimizer"][name]["state"], b["optimizer"][name]["state"]
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), f"{name} state {i}.{k}"
    assert a["data_position"] == b["data_position"]
    assert same_nested(a.get("online_probe"), b.get("online_probe")), "the online probe's state differs"


def tiny_cfg(kind: str, estimator: str | None, *extra: str):
    """A config of ``kind`` on a depth-2 DCGAN small enough for one CPU step (shards never read)."""
    common = ["data.shards=/nonexistent", f"task.kind={kind}", "model.encoder=dcgan", *extra]
    if estimator:
        common.append(f"task.estimator={estimator}")
    if kind == "infomax":
        return load_config(None, common + ["model.depth=2", "data.batch_size=8"])
    return load_config(None, common + ["model.depth=2", "model.kwargs.image_size=64", "data.images_per_batch=2",
                                       "data.perms_per_image=4", "data.num_permutations=10"])
