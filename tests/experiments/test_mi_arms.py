"""Controlled arms of the Gaussian benchmark: the η-MINE/DV-MINE gradient identity they rest on,
the marginal pairings, the oracle η and a tiny end-to-end run."""
from __future__ import annotations

import math

import pytest
import torch

from experiments.mi_gaussian import arms
from experiments.mi_gaussian.critics import SeparableCritic
from pretrain import estimators
from pretrain.estimators.base import masked_log_mean_exp


def test_eta_gradient_is_dv_gradient_plus_one_scalar_times_grad_log_z():
    """∇L_η = ∇L_DV + (e^{−η}·Ẑ_b − 1)·∇log Ẑ_b: the dv-mine/noise arm adds exactly this term with r in place of e^{−η}Ẑ_b."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    eta_bound, dv = estimators.build("eta-mine").double(), estimators.build("dv-mine")
    eta_bound.set_eta(0.3)
    g_eta, = torch.autograd.grad(eta_bound(scores).loss, scores)
    g_dv, = torch.autograd.grad(dv(scores).loss, scores)
    log_z = masked_log_mean_exp(scores, ~torch.eye(8, dtype=torch.bool))
    r = float(torch.exp(log_z.detach() - 0.3))
    g_noise, = torch.autograd.grad(dv(scores).loss + (r - 1.0) * log_z, scores)
    assert torch.allclose(g_eta, g_noise)
    assert not torch.allclose(g_eta, g_dv)


@pytest.mark.parametrize("arm, parsed", [("eta-mine", ("eta-mine", "", 0)), ("dv-mine@N", ("dv-mine", "", 1)),
                                         ("eta-mine-clip@4N", ("eta-mine-clip", "", 4)), ("eta-mine/oracle", ("eta-mine", "oracle", 0)),
                                         ("dv-mine/noise", ("dv-mine", "noise", 0))])
def test_arm_names(arm, parsed):
    assert arms.parse_arm(arm) == parsed


@pytest.mark.parametrize("arm", ["eta-mine@3N", "nope", "dv-mine/oracle@N", "eta-mine/noise"])
def test_unknown_arms_are_refused_by_name(arm):
    with pytest.raises(ValueError, match="unknown arm"):
        arms.parse_arm(arm)


@pytest.mark.parametrize("shifts", [1, 4])
def test_derangement_pairs_are_off_diagonal_and_balanced(shifts):
    mask = arms.derangement_masks(16, shifts, torch.Generator().manual_seed(1))
    assert int(mask.sum()) == 16 * shifts
    assert not bool(mask.diagonal().any())
    assert mask.sum(0).eq(shifts).all() and mask.sum(1).eq(shifts).all()


def test_full_log_z_is_the_log_mean_over_every_marginal_pair():
    torch.manual_seed(0)
    critic = SeparableCritic(2, 3, hidden=8, embed=4)
    x, y = torch.randn(2, 40, 3), torch.randn(2, 40, 3)
    log_z, ratios = arms.full_log_z(critic, [1], x[1:], y[1:], 40, 2000, 8, torch.Generator().manual_seed(0))
    f = critic.scores(x, y)[1].detach()
    brute = masked_log_mean_exp(f, ~torch.eye(40, dtype=torch.bool))
    assert math.isclose(float(log_z[0]), float(brute), rel_tol=0, abs_tol=1e-5)
    assert ratios.shape == (1, 2000)
    assert abs(float(torch.exp(ratios).mean()) - 1.0) < 0.05  # E[Ẑ_b] = Z over random batches


def test_quick_run_reports_every_arm_with_lag_and_noise_statistics(tmp_path):
    chosen = "arms=[eta-mine,dv-mine,eta-mine/oracle,dv-mine/noise,dv-mine@N]"
    cfg = arms.load_config([chosen, "runs=2", "steps=40", "eval_every=20", "refresh=40"], quick=True)
    result = arms.run_arms(cfg, tmp_path, log=lambda m: None)
    curves = result["curves"]
    assert set(curves) == set(cfg.arms)
    for arm, c in curves.items():
        assert c["step"] == [20, 40] and all(len(v) == 2 for v in c["runs"])
        if arms.parse_arm(arm)[0].startswith("eta-mine"):
            assert len(c["s_mean"]) == 2 and all(math.isfinite(v) for v in c["s_std"][-1])
    first = result["refreshes"][0]
    assert first["step"] == 0 and set(first["log_z"]) == {"eta-mine/oracle#0", "eta-mine/oracle#1", "dv-mine/noise#0", "dv-mine/noise#1"}
    assert (tmp_path / "curves.json").exists()


def test_bad_settings_name_the_setting():
    with pytest.raises(ValueError, match="unknown arm"):
        arms.load_config(["arms=[eta-mine,dv-mine@2N]"])
    with pytest.raises(ValueError, match="refresh must be >= 1"):
        arms.load_config(["refresh=0"])


def test_holm_matches_the_step_down_definition():
    from experiments.mi_gaussian.analysis import holm

    p = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01, 0.03, 0.04, 0.20 -> ×4, ×3, ×2, ×1, made monotone: 0.04, 0.09, 0.09, 0.20
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_analysis_reads_peak_and_area_under_the_curve(tmp_path):
    import json

    from experiments.mi_gaussian import analysis

    dv = [[1.0, 1.1, 0.9], [2.0, 2.1, 1.9], [1.5, 1.6, 1.4]]  # [evaluations, runs]: peaks at the middle evaluation
    eta = [[0.5, 0.6, 0.4], [1.0, 1.3, 0.9], [1.5, 1.6, 1.4]]  # level at the end, behind at each run's own peak
    curves = {"20": {"dv-mine": {"step": [1, 2, 3], "runs": dv}, "eta-mine": {"step": [1, 2, 3], "runs": eta,
                                                                          "eta_minus_eta_star": [[0.5, -0.5, 0.1]] * 3}}}
    (tmp_path / "curves.json").write_text(json.dumps(curves))
    text = analysis.main([str(tmp_path)])
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| eta-mine | ")}
    assert "+0.000 ± 0.000 | 0/3" in rows["final"]
    assert "| 1.500 | -0.500 ± 0.000 | 0/3" in rows["peak"]  # each run's best: 1.5 - 2.0, 1.6 - 2.1, 1.4 - 1.9
    assert "| 1.022 | -0.478 ± 0.038 | 0/3" in rows["AUC"]  # the mean over the evaluations
    assert "| +0.033 | 0.367 |" in text  # η − η*: signed mean against mean absolute
    assert (tmp_path / "analysis.md").exists()
