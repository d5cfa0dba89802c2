"""The real entry points through `python -m cluster.submit` on a local Ray head (127.0.0.1, token
auth): a tiny InfoMax η-MINE pretraining job writes its run directory (config, TensorBoard,
checkpoint) to the "shared" directory; submitting the same run name again continues it from that
checkpoint; a linear-evaluation job then probes the checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.support.shards import synthetic_shards

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Stands in for the cluster's shared file system: shards, run directories, results."""
    root = tmp_path_factory.mktemp("shared")
    synthetic_shards(root / "shards", 32, {"train": 48, "test": 24}, shard_size=12)
    return root


def tiny_run(shared: Path, steps: int) -> list[str]:
    return [
        "--config", str(REPO_ROOT / "configs" / "demo_infomax_eta.yaml"),
        f"run.root={shared}/runs", "run.name=e2e", f"data.shards={shared}/shards",
        "data.batch_size=8", "data.batches_per_epoch=3", "task.kwargs.hidden_dim=32", "task.kwargs.embed_dim=16",
        "train.num_workers=2", f"train.steps={steps}", "train.report_every=2", "train.checkpoint_every=2",
        "train.image_every=0",
    ]


def test_pretrain_resume_and_linear_eval_jobs(head, shared):
    first = head.cli(*tiny_run(shared, steps=4), timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert re.search(r"^job e2e-\S+: SUCCEEDED$", first.stdout, re.M)
    (run_dir,) = (shared / "runs").iterdir()
    assert run_dir.name.startswith("e2e-") and (run_dir / "config.yaml").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    checkpoint = run_dir / "checkpoint_000000004" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["step"] == 4

    # Same run name, more steps: the job continues the run directory from step 4.
    again = head.cli(*tiny_run(shared, steps=6), timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"run e2e: resuming {run_dir}" in again.stdout
    assert [p.name for p in (shared / "runs").iterdir()] == [run_dir.name]
    assert torch.load(run_dir / "checkpoint_000000006" / "checkpoint.pt", weights_only=True)["step"] == 6
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # 2 and 4 from the first job, 6 from the second: nothing redone

    evaluated = head.cli(
        "eval", f"checkpoint={run_dir}", f"data={shared / 'shards'}", f"out={shared / 'eval'}",
        "epochs=2", "seeds=1", "cache_dir=null", "device=cpu", "progress=false",
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    assert re.search(r"^job eval-\S+: SUCCEEDED$", evaluated.stdout, re.M)
    results = json.loads((shared / "eval" / "results.json").read_text())
    assert Path(results["checkpoint"]).parent == run_dir / "checkpoint_000000006"  # the run's latest
    assert results["step"] == 6 and results["num_test"] == 24 and results["encoder_unchanged"] is True
    assert 0.0 <= results["top1"]["mean"] <= 100.0
