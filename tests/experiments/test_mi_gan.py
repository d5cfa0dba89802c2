"""The MI-regularised GAN on 25 Gaussians: mode counting, the MI term, a short run, the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.mi_gan import gan as mi_gan
from pretrain import estimators

MEANS = mi_gan.grid_means(5, 2.0)
SIGMA = 0.05


def test_grid_is_5x5_with_spacing_2_centred():
    assert MEANS.shape == (25, 2)
    assert sorted(set(MEANS[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert sorted(set(MEANS[:, 1].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_mixture_samples_lie_on_modes():
    x = mi_gan.sample_mixture(MEANS, SIGMA, 5000, torch.Generator().manual_seed(0))
    stats = mi_gan.mode_stats(x, MEANS, SIGMA, min_per_mode=20)
    assert stats.modes_covered == 25
    assert stats.high_quality > 0.98  # 3σ in 2-D holds 1 − e^{-4.5} ≈ 98.9 %


def test_all_modes_covered_by_hand_made_samples():
    noise = torch.full((25 * 30, 2), 0.5 * 3 * SIGMA) * torch.tensor([1.0, -1.0]) / math.sqrt(2)
    x = MEANS.repeat_interleave(30, dim=0) + noise  # 30 per mode, each 1.5σ from its centre
    stats = mi_gan.mode_stats(x, MEANS, SIGMA, min_per_mode=20)
    assert stats.modes_covered == 25 and stats.high_quality == 1.0
    assert stats.counts.tolist() == [30] * 25


def test_one_mode_only():
    x = MEANS[7].repeat(2500, 1) + 0.01
    stats = mi_gan.mode_stats(x, MEANS, SIGMA, min_per_mode=20)
    assert stats.modes_covered == 1 and stats.high_quality == 1.0
    assert stats.counts[7] == 2500 and stats.counts.sum() == 2500


def test_points_far_from_every_mode_count_for_nothing():
    far = torch.tensor([[100.0, -100.0], [1.0, 1.0], [-3.0, 0.0], [0.0, 4.0 + 4 * SIGMA]]).repeat(100, 1)
    stats = mi_gan.mode_stats(far, MEANS, SIGMA, min_per_mode=1)
    assert stats.modes_covered == 0 and stats.high_quality == 0.0


def test_mode_needs_min_per_mode_high_quality_samples():
    x = torch.cat([MEANS[0].repeat(19, 1), MEANS[1].repeat(20, 1), torch.tensor([[50.0, 50.0]]).repeat(61, 1)])
    stats = mi_gan.mode_stats(x, MEANS, SIGMA, min_per_mode=20)
    assert stats.modes_covered == 1
    assert stats.high_quality == pytest.approx(39 / 100)


def test_mode_stats_rejects_wrong_layout():
    with pytest.raises(ValueError, match="samples must be"):
        mi_gan.mode_stats(torch.zeros(10, 3), MEANS, SIGMA, 1)


def _run(est, seed, reached_at, final_modes, n=25, mi=1.0):
    history = [{"step": s, "modes_covered": n if reached_at is not None and s >= reached_at else final_modes,
                "high_quality": 0.9, "mi": mi} for s in range(0, 1001, 250)]
    return {"estimator": est, "seed": seed, "history": history, "cpu_seconds": 1.0,
            "steps_to_all_modes": mi_gan.first_step_all_modes(history, n)}


def test_steps_to_all_modes_summary():
    runs = [_run("eta-mine", 0, 250, 24), _run("eta-mine", 1, 750, 24), _run("none", 0, None, 3, mi=None)]
    assert [r["steps_to_all_modes"] for r in runs] == [250, 750, None]
    s = mi_gan.summarise(runs, 25, 1000)
    assert s["eta-mine"]["steps_to_all_modes_text"].startswith("500 ± 354 (2/2 runs)")
    assert s["none"]["steps_to_all_modes_text"] == "not reached (0/1 runs within 1,000 steps)"
    assert s["none"]["final_modes_covered"] == [3] and s["none"]["final_mi_text"] == "n/a"


def test_code_scores_layout():
    table = torch.arange(12.0).reshape(3, 4)
    codes = torch.tensor([2, 0, 3])
    scores, pos, neg = mi_gan.code_scores(table, codes)
    assert scores.shape == (3, 5)
    assert scores[:, 0].tolist() == [2.0, 4.0, 11.0]
    assert torch.equal(scores[:, 1:], table)
    assert pos[:, 0].all() and not pos[:, 1:].any() and torch.equal(neg, ~pos)


@pytest.mark.parametrize("name", ["eta-mine", "dv-mine"])
def test_mi_term_is_the_registered_bound(name, monkeypatch):
    built = []
    real_build = estimators.build

    def spy(n, **kw):
        built.append(n)
        return real_build(n, **kw)

    monkeypatch.setattr(mi_gan.estimators, "build", spy)
    term = mi_gan.MITerm(name, n_codes=25, hidden=32)
    assert built == [name]
    x, codes = torch.randn(64, 2), torch.randint(25, (64,))
    got = term(x, codes)
    reference = real_build(name)
    reference.load_state_dict(term.bound.state_dict())
    expected = reference(*mi_gan.code_scores(term.critic(x), codes))
    assert torch.allclose(got.loss, expected.loss) and torch.allclose(got.mi, expected.mi)


@pytest.mark.parametrize("name", ["eta-mine", "dv-mine"])
def test_mi_term_reaches_log_k_on_separable_codes_and_never_exceeds_it(name):
    # x determines c exactly, c uniform over K codes: I(x; c) = log K. With the exact marginal over
    # c, the batch bound is KL(p̂(x,c) || p̂(x)u(c)) ≤ log K for every critic.
    torch.manual_seed(0)
    k = 25
    term = mi_gan.MITerm(name, n_codes=k, hidden=64)
    opt = torch.optim.Adam(term.critic.parameters(), lr=1e-2)
    opt_eta = torch.optim.Adam(term.bound.parameters(), lr=1e-2) if list(term.bound.parameters()) else None
    codes = torch.arange(k).repeat(10)
    x = MEANS[codes] + 0.05 * torch.randn(len(codes), 2)
    estimates = []
    for _ in range(400):
        opt.zero_grad()
        if opt_eta:
            opt_eta.zero_grad()
        est = term(x, codes)
        est.loss.backward()
        opt.step()
        if opt_eta:
            opt_eta.step()
        estimates.append(float(est.mi))
    assert max(estimates) <= math.log(k) + 1e-4
    assert estimates[-1] > math.log(k) - 0.15


def test_eta_is_optimised_during_training():
    cfg = mi_gan.MIGANConfig(steps=30, eval_every=10, eval_samples=200, batch=64, hidden=32, snapshots=[30])
    run = mi_gan.train_one(cfg, "eta-mine", seed=0, log=lambda *a, **k: None)
    etas = [row["eta"] for row in run["history"]]
    assert etas[0] == 0.0 and abs(etas[-1]) > 1e-3
    assert [row["step"] for row in run["history"]] == [0, 10, 20, 30]
    assert set(run["snapshots"]) == {30}


def test_short_run_improves_mode_coverage():
    cfg = mi_gan.MIGANConfig(steps=750, eval_every=250, snapshots=[750])
    run = mi_gan.train_one(cfg, "eta-mine", seed=0, log=lambda *a, **k: None)
    # a GAN's mode count swings between evaluations (and its path differs between CPUs' kernels): the
    # claim is that training reaches wide coverage, read at the run's best evaluation (on the project's
    # 2-core machine: 1 mode at step 0, 8 at 500, 18 at 750; MI above 2 from step 400)
    start, best = run["history"][0], max(run["history"][1:], key=lambda h: h["modes_covered"])
    assert best["modes_covered"] >= start["modes_covered"] + 8
    assert best["mi"] > 2.0  # log 25 ≈ 3.22 caps it: codes are mostly told apart


def test_cli_writes_results_png_and_tensorboard(tmp_path, capsys):
    out = tmp_path / "gan"
    mi_gan.main(["estimators=[eta-mine,none]", "steps=6", "eval_every=3", "eval_samples=100",
                 "batch=32", "hidden=16", "runs=2", f"out={out}"])
    res = json.loads((out / "results.json").read_text())
    assert [(r["estimator"], r["seed"]) for r in res["runs"]] == [("eta-mine", 0), ("eta-mine", 1), ("none", 0), ("none", 1)]
    assert [row["step"] for row in res["runs"][0]["history"]] == [0, 3, 6]
    assert res["runs"][2]["history"][-1]["mi"] is None
    last = res["runs"][0]["history"][-1]
    assert last["mi_refit"] >= last["mi"] - 1e-6  # η in closed form on the evaluation samples: never looser
    assert set(res["summary"]) == {"eta-mine", "none"} and res["config"]["steps"] == 6
    assert (out / "samples.png").stat().st_size > 1000
    assert len(list((out / "tb" / "eta-mine-seed1").glob("events.out.tfevents.*"))) == 1
    assert "steps to all 25 modes" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["estimators=[nonsense]"], "unknown estimator 'nonsense'"),
    (["estimators=[a-mine]"], "a-mine needs a baseline"),
    (["stepz=3"], "Key 'stepz' not in 'MIGANConfig'"),
    (["steps=x"], "steps: Value 'x'"),
    (["runs=0"], "runs must be >= 1"),
    (["steps"], "expected key=value"),
])
def test_cli_rejects_bad_settings_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        mi_gan.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_help_shows_the_dataclass_defaults(capsys):
    with pytest.raises(SystemExit):
        mi_gan.parse_args(["--help"])
    out = capsys.readouterr().out
    d = mi_gan.MIGANConfig()
    assert f"steps: {d.steps}" in out and f"lr_eta: {d.lr_eta}" in out and "- eta-mine" in out


def test_eta_variants_take_the_eta_step_with_the_critic():
    """Every η-MINE bound works as the MI term; eta-mine-ema's η follows its closed form."""
    cfg = mi_gan.MIGANConfig(steps=6, eval_every=3, eval_samples=100, batch=32, hidden=16, snapshots=[6])
    for name in ("eta-mine-clip", "eta-mine-ema"):
        run = mi_gan.train_one(cfg, name, seed=0, log=lambda *a, **k: None)
        etas = [row["eta"] for row in run["history"]]
        assert all(math.isfinite(e) for e in etas) and etas[-1] != etas[0], name


@pytest.mark.parametrize("name", [n for n in estimators.names() if n not in mi_gan.UNSUPPORTED])
def test_every_usable_registered_bound_gives_a_finite_loss_and_gradient(name):
    torch.manual_seed(0)
    term = mi_gan.MITerm(name, n_codes=5, hidden=16)
    x = torch.randn(40, 2, requires_grad=True)
    est = term(x, torch.randint(5, (40,)))
    est.loss.backward()
    assert torch.isfinite(est.loss) and torch.isfinite(est.mi)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
