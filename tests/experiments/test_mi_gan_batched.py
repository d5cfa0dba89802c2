"""The batched, resumable MI-GAN runner: a SIGKILLed run continues from its checkpoint to the same result."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.mi_gan import batched
from experiments.mi_gan.gan import load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ["estimators=[eta-mine,none]", "runs=2", "eval_every=10", "eval_samples=200", "batch=32", "hidden=16", "noise_dim=4"]


def test_first_held_needs_the_evaluations_in_a_row():
    steps = [10, 20, 30, 40, 50, 60]
    assert batched.first_held([25, 24, 25, 25, 25, 25], steps, 25, 3) == 30
    assert batched.first_held([25, 25, 24, 25, 25, 24], steps, 25, 3) is None
    assert batched.first_held([25, 25, 24], steps[:3], 25, 1) == 10


def test_seeds_share_initial_weights_across_estimators_only():
    net = batched.Copies(load_config(["estimators=[eta-mine,dv-mine,none]", "runs=2", "hidden=8"]))
    w = net.G.weights[0]  # copies: seed 0 → 0, 1, 2; seed 1 → 3, 4, 5
    assert torch.equal(w[0], w[1]) and torch.equal(w[0], w[2]) and torch.equal(w[3], w[5])
    assert not torch.equal(w[0], w[3])
    assert len(net.bounds) == 4 and net.mi_copies == [0, 1, 3, 4]


def test_sigkilled_run_continues_to_the_uninterrupted_result(tmp_path):
    steps = 120
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.mi_gan.batched", "--checkpoint-every", "10", *TINY,
                             f"steps={steps}", f"out={killed}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < at < steps, at  # killed mid-run
    resumed = batched.run(load_config([*TINY, f"steps={steps}", f"out={killed}"]), checkpoint_every=10, log=lambda *a, **k: None)
    straight = batched.run(load_config([*TINY, f"steps={steps}", f"out={whole}"]), checkpoint_every=10, log=lambda *a, **k: None)
    assert resumed["history"] == straight["history"]
    assert resumed["summary"] == straight["summary"]


def test_a_checkpoint_from_other_settings_is_refused_by_name(tmp_path):
    batched.run(load_config([*TINY, "steps=10", f"out={tmp_path}"]), checkpoint_every=10, log=lambda *a, **k: None)
    with pytest.raises(ValueError, match="runs=2, not 3"):
        batched.run(load_config([*TINY, "runs=3", "steps=20", f"out={tmp_path}"]), log=lambda *a, **k: None)


def test_paired_compares_each_mi_estimator_with_dv_mine_seed_by_seed():
    from scipy import stats

    def seeds(modes, hq):
        return {"seeds": [{"time_avg_modes": m, "time_avg_high_quality": h} for m, h in zip(modes, hq)]}

    summary = {"eta-mine": seeds([18, 17, 16, 19, 15], [0.7, 0.8, 0.6, 0.7, 0.7]),
               "dv-mine": seeds([17, 17.5, 14, 18, 16], [0.7, 0.7, 0.7, 0.6, 0.8]),
               "none": seeds([7, 8, 6, 7, 7], [0.6, 0.6, 0.6, 0.6, 0.6])}
    rows = batched.paired(summary)
    assert [(r["estimator"], r["score"]) for r in rows] == [("eta-mine", "time_avg_modes"),
                                                           ("eta-mine", "time_avg_high_quality")]  # never "none"
    modes = rows[0]
    diff = [1, -0.5, 2, 1, -1]
    assert modes["mean"] == pytest.approx(sum(diff) / 5) and modes["ahead"] == 3 and modes["seeds"] == 5
    assert modes["p"] == pytest.approx(stats.wilcoxon(diff).pvalue)
    ps = sorted(r["p"] for r in rows)  # Holm over the two tests: 2·p of the smaller, then the running max
    assert sorted(r["p_holm"] for r in rows) == pytest.approx([min(1, 2 * ps[0]), max(min(1, 2 * ps[0]), ps[1])])
    assert batched.paired({"eta-mine": summary["eta-mine"]}) == []  # no DV-MINE: nothing to compare


def test_a_finished_run_started_again_rewrites_its_tables_and_trains_nothing(tmp_path):
    cfg = [*TINY[1:], "estimators=[eta-mine,dv-mine]", "runs=3", "steps=20", f"out={tmp_path}"]
    first = batched.run(load_config(cfg), checkpoint_every=10, log=lambda *a, **k: None)
    checkpoint = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "results.md").write_text("stale")
    again = batched.run(load_config(cfg), checkpoint_every=10, log=lambda *a, **k: None)
    assert (tmp_path / "checkpoint.pt").read_bytes() == checkpoint
    assert again["history"] == first["history"] and again["summary"] == first["summary"] and again["step"] == 20
    text = (tmp_path / "results.md").read_text()
    assert "20 of 20 generator steps" in text
    assert "| eta-mine − dv-mine | time-averaged modes |" in text and "Holm-corrected over the 2 tests" in text
