"""η-MINE's refit read-out, its variants (clipped witness, closed-form moving-average η) and
Algorithm 1's η step, against NumPy transcriptions of their formulas."""
import math

import numpy as np
import pytest
import torch

from pretrain import estimators as E

ETA = ["eta-mine", "eta-mine-clip", "eta-mine-ema"]


def np_lme(v):
    m = v.max()
    return math.log(np.mean(np.exp(v - m))) + m


def case(seed, n=8, scale=1.0):
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 2, size=(n, n)) * scale
    pos = np.eye(n, dtype=bool)
    return s, pos, ~pos


@pytest.mark.parametrize("name", ETA)
def test_refit_is_dv_of_the_same_pairs_and_never_below_the_estimate(name):
    s, pos, neg = case(0)
    est = E.build(name).eval()
    g = np.clip(s, -est.tau, est.tau) if name == "eta-mine-clip" else s
    for eta in (-1.0, 0.0, 0.7, np_lme(g[neg])):
        est.set_eta(eta)
        out = est(torch.tensor(s), torch.tensor(pos), torch.tensor(neg))
        refit = est.metrics()["mi/refit"].item()
        assert refit == pytest.approx(g[pos].mean() - np_lme(g[neg]), rel=1e-12)
        assert refit >= out.mi.item() - 1e-12
    assert refit == pytest.approx(out.mi.item(), abs=1e-6)  # equal at η = log mean_marg e^g
    assert set(est.metrics()) == {"eta", "normaliser", "mi/refit"}


def test_clip_loss_and_gradient_match_the_formula():
    """L = e^{-η}·mean_marg e^{clip f} − mean_joint clip f + η − 1; ∂L/∂f is zero where clipped."""
    s, pos, neg = case(1, scale=3.0)  # scores up to ~±20: many clipped at τ = 2
    tau, eta = 2.0, 0.25
    assert (np.abs(s) > tau).any() and (np.abs(s) < tau).any()
    est = E.build("eta-mine-clip", tau=tau, eta_init=eta).double()
    x = torch.tensor(s, requires_grad=True)
    out = est(x, torch.tensor(pos), torch.tensor(neg))
    g = np.clip(s, -tau, tau)
    expected = math.exp(-eta) * np.exp(g[neg]).mean() - g[pos].mean() + eta - 1
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    out.loss.backward()
    inside = np.abs(s) < tau
    grad = np.where(neg, math.exp(-eta) * np.exp(g) / neg.sum(), -1.0 / pos.sum()) * inside
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-12, atol=1e-15)
    assert out.mi.item() <= 2 * tau  # a bound of a witness in [−τ, τ]
    with pytest.raises(ValueError, match="tau"):
        E.build("eta-mine-clip", tau=0.0)


@pytest.mark.parametrize("name", ETA)
def test_loss_is_linear_in_the_pairs(name):
    """Fixed η: the loss of all pairs is the mean of the losses of two halves with as many pairs
    each, so a minibatch gradient is an unbiased gradient of the objective."""
    s, _, _ = case(2, n=8, scale=2.0)
    est = E.build(name, **({"tau": 3.0} if name == "eta-mine-clip" else {})).double().eval()
    est.set_eta(0.4)
    t = torch.tensor(s)
    rows = torch.arange(8)[:, None]
    pos = torch.eye(8, dtype=torch.bool)
    halves = [(rows < 4) & torch.ones(8, 8, dtype=torch.bool), (rows >= 4) & torch.ones(8, 8, dtype=torch.bool)]
    parts = [est(t, pos & h, ~pos & h).loss for h in halves]
    assert est(t, pos, ~pos).loss.item() == pytest.approx(((parts[0] + parts[1]) / 2).item(), rel=1e-12)


def test_ema_eta_follows_the_moving_average_of_past_batches():
    alpha = 0.25
    est = E.build("eta-mine-ema", alpha=alpha, n_critic=2).double()
    opt = torch.optim.Adam(est.parameters(), lr=1.0)  # must leave η alone: it has no gradient
    batches = [case(10 + k)[0] for k in range(5)]
    _, pos, neg = case(0)
    ema = None
    for step, s in enumerate(batches):
        x = torch.tensor(s, requires_grad=True)
        eta_before = est.eta.item()
        if ema is None:  # the first call warm-starts from its own batch
            ema = math.exp(np_lme(s[neg]))
            eta_before = math.log(ema)
        out = est(x, torch.tensor(pos), torch.tensor(neg))
        assert est.eta.item() == pytest.approx(eta_before, rel=1e-12)  # the loss reads past batches only
        out.loss.backward()
        grad = np.where(neg, np.exp(s - eta_before) / neg.sum(), -1.0 / pos.sum())
        np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-10)
        assert est.eta.grad is None
        moved = E.eta_step(est, opt, step)
        assert moved == (step % 2 == 1)
        if moved:  # every n_critic = 2 steps: η = log EMA, this batch included
            ema = (1 - alpha) * ema + alpha * math.exp(np_lme(s[neg]))
        assert est.eta.item() == pytest.approx(math.log(ema), rel=1e-10)
    state = est.state_dict()
    assert state["log_ema"].item() == pytest.approx(math.log(ema)) and "eta" in state


def test_eta_step_follows_algorithm_1():
    """Gradient-trained η moves only every n_critic steps; modules without η-MINE step always."""
    est = E.build("eta-mine", n_critic=3)
    opt = torch.optim.SGD(est.parameters(), lr=0.1)
    s = torch.randn(5, 5)
    moved = []
    for step in range(6):
        opt.zero_grad()
        est(s).loss.backward()
        before = est.eta.item()
        E.eta_step(torch.nn.ModuleList([est]), opt, step)
        moved.append(est.eta.item() != before)
    assert moved == [False, False, True, False, False, True]
    w = torch.nn.Parameter(torch.ones(1))
    plain = torch.optim.SGD([w], lr=1.0)
    w.grad = torch.ones(1)
    assert E.eta_step(torch.nn.Linear(1, 1), plain, 0) and w.item() == 0.0
    assert E.eta_step(torch.nn.Linear(1, 1), None, 0)


def test_ema_eta_step_before_any_training_call_keeps_eta():
    est = E.build("eta-mine-ema", eta_init=0.3)
    assert E.eta_step(est, None, 0) and est.eta.item() == pytest.approx(0.3)
    est(torch.randn(4, 4))  # now warm-started from this batch
    assert est.eta.item() != pytest.approx(0.3) and torch.isfinite(est.log_ema)
