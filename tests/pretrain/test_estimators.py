"""Each bound against a slow NumPy transcription of the paper's formula, and the facts that follow."""
import math

import numpy as np
import pytest
import torch

from pretrain import estimators as E
from pretrain.estimators.eta_mine_convex import evaluate_convex, fit_convex

ALL = ["eta-mine", "eta-mine-clip", "eta-mine-ema", "dv-mine", "dv-mine-ema", "f-mine", "a-mine", "infonce", "jsd", "smile"]


def np_lme(v):
    v = np.asarray(v, dtype=np.float64)
    m = v.max()
    return math.log(np.mean(np.exp(v - m))) + m


def reference_mi(name, s, pos, neg, eta=0.0, log_b=None, tau=5.0):
    """The bound's estimate straight from the formulas (NOTES.md table), in float64 NumPy."""
    s = s.astype(np.float64)
    joint, marg = s[pos], s[neg]
    if name in ("eta-mine", "eta-mine-ema"):
        return -(math.exp(-eta) * np.mean(np.exp(marg)) - joint.mean() + eta - 1)
    if name == "eta-mine-clip":  # η-MINE of clip(f, ±τ), τ = 7.5 by default
        joint, marg = np.clip(joint, -7.5, 7.5), np.clip(marg, -7.5, 7.5)
        return -(math.exp(-eta) * np.mean(np.exp(marg)) - joint.mean() + eta - 1)
    if name in ("dv-mine", "dv-mine-ema"):
        return joint.mean() - np_lme(marg)
    if name in ("f-mine", "jsd"):  # jsd reports NWJ(f + 1)
        return joint.mean() - np.mean(np.exp(marg)) + 1
    if name == "a-mine":
        cols = np.nonzero(neg)[1]
        return joint.mean() - np.mean(np.exp(marg - log_b[cols])) - log_b.mean() + 1
    if name == "infonce":
        vals = []
        for i in range(s.shape[0]):
            cand = s[i][pos[i] | neg[i]]
            vals.append(s[i][pos[i]][0] - np_lme(cand))
        return float(np.mean(vals))
    if name == "smile":
        return joint.mean() - np_lme(np.clip(marg, -tau, tau))
    raise KeyError(name)


def call(est, name, scores, pos=None, neg=None, log_b=None):
    kw = {"log_baseline": log_b} if name == "a-mine" else {}
    return est(scores, pos, neg, **kw)


def random_case(seed, n=7, m=None, one_pos_per_row=False):
    rng = np.random.default_rng(seed)
    m = m or n
    s = rng.normal(0, 2, size=(n, m))
    if one_pos_per_row:
        pos = np.zeros((n, m), bool)
        pos[np.arange(n), rng.integers(0, m, n)] = True
    else:
        pos = rng.random((n, m)) < 0.3
        pos[0, 0] = True
    neg = ~pos & (rng.random((n, m)) < 0.7)
    neg[np.arange(n), (np.argmax(pos, 1) + 1) % m] |= ~pos[np.arange(n), (np.argmax(pos, 1) + 1) % m]
    log_b = rng.normal(0, 1, size=m)
    return s, pos, neg, log_b


def test_names_and_unknown():
    assert E.names() == ALL
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        E.build("nope")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_formula(name, seed):
    s, pos, neg, log_b = random_case(seed, n=7, m=9, one_pos_per_row=(name == "infonce"))
    est = E.build(name)
    eta = 0.0
    if isinstance(est, E.EtaMINE):
        eta = 0.375  # exact in float32, the dtype of the parameter
        est.set_eta(eta)
        est.eval()  # eta-mine-ema would warm-start η from the batch in training mode
    out = call(est, name, torch.tensor(s), torch.tensor(pos), torch.tensor(neg), torch.tensor(log_b))
    expected = reference_mi(name, s, pos, neg, eta=eta, log_b=log_b)
    assert out.mi.dtype == torch.float64 and not out.mi.requires_grad
    assert out.mi.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    if name not in ("jsd", "smile"):  # those train with the JS surrogate
        assert out.loss.item() == pytest.approx(-expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_default_masks_are_diagonal(name):
    s = torch.randn(6, 6, dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.bool)
    a = call(E.build(name), name, s, None, None, torch.zeros(6, dtype=torch.float64))
    b = call(E.build(name), name, s, eye, ~eye, torch.zeros(6, dtype=torch.float64))
    assert a.mi.item() == pytest.approx(b.mi.item())


def test_bad_inputs_raise_clear_errors():
    est = E.build("dv-mine")
    with pytest.raises(ValueError, match="pass pos_mask"):
        est(torch.randn(3, 4))
    with pytest.raises(ValueError, match="overlap"):
        est(torch.randn(3, 3), torch.eye(3, dtype=torch.bool), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="exactly one joint pair"):
        E.build("infonce")(torch.randn(3, 3), torch.ones(3, 3, dtype=torch.bool) & ~torch.eye(3, dtype=torch.bool).flip(0))
    with pytest.raises(ValueError, match="log_baseline"):
        E.build("a-mine")(torch.randn(3, 3), log_baseline=torch.zeros(2))


def test_jsd_and_smile_gradients_are_the_js_objective():
    s, pos, neg, _ = random_case(3)
    for name in ("jsd", "smile"):
        x = torch.tensor(s, requires_grad=True)
        E.build(name)(x, torch.tensor(pos), torch.tensor(neg)).loss.backward()
        y = torch.tensor(s, requires_grad=True)
        sp = torch.nn.functional.softplus
        js = (-sp(-y[torch.tensor(pos)])).mean() - sp(y[torch.tensor(neg)]).mean()
        (-js).backward()
        torch.testing.assert_close(x.grad, y.grad)


def test_dv_ema_gradient_uses_moving_average():
    est = E.build("dv-mine-ema", alpha=0.5)
    first = torch.randn(5, 5, dtype=torch.float64)
    est(first)  # ema = mean_marg e^f of the first batch
    eye = torch.eye(5, dtype=torch.bool)
    m1 = torch.exp(first[~eye]).mean()
    x = (torch.randn(5, 5, dtype=torch.float64) + 1).requires_grad_()
    out = est(x)
    m2 = torch.exp(x.detach()[~eye]).mean()
    ema = 0.5 * m1 + 0.5 * m2
    out.loss.backward()
    expected = torch.where(eye, -torch.ones(5, 5, dtype=torch.float64) / 5, torch.exp(x.detach()) / 20 / ema)
    torch.testing.assert_close(x.grad, expected)
    assert out.loss.item() == pytest.approx(torch.log(m2).item() - x.detach().diag().mean().item())
    assert est.log_ema.item() == pytest.approx(math.log(ema.item()))


@pytest.mark.parametrize("name", ["dv-mine-ema", "eta-mine-ema"])
def test_ema_with_alpha_one_is_the_last_batch(name):
    """alpha = 1 (allowed) keeps nothing of the past: the average is the last batch's mean_marg e^f."""
    est = E.build(name, alpha=1.0).double()
    eye = torch.eye(5, dtype=torch.bool)
    for seed in range(3):
        s = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        est(s)
        if name == "eta-mine-ema":
            E.eta_step(est, None, seed)
    assert est.log_ema.item() == pytest.approx(math.log(torch.exp(s[~eye]).mean().item()), rel=1e-12)


def test_stable_for_scores_of_plus_minus_100():
    g = torch.Generator().manual_seed(0)
    s = (torch.randint(0, 2, (16, 16), generator=g).float() * 200 - 100).requires_grad_()
    for name in ("dv-mine", "dv-mine-ema", "infonce", "jsd", "smile"):
        out = call(E.build(name), name, s)
        grad, = torch.autograd.grad(out.loss, s)
        assert torch.isfinite(out.loss) and torch.isfinite(out.mi) and torch.isfinite(grad).all(), name
    eta = E.build("eta-mine")
    eta.set_eta(eta.closed_form_eta(s))
    out = eta(s)
    grad, = torch.autograd.grad(out.loss, s)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    for name in ("eta-mine", "f-mine", "a-mine"):  # e^f-scale values: finite in float64 / reported in float64
        out = call(E.build(name), name, s.detach().double(), log_b=torch.zeros(16, dtype=torch.float64))
        assert torch.isfinite(out.loss) and torch.isfinite(out.mi), name


def test_eta_star_minimises_and_equals_dv():
    s, pos, neg, _ = random_case(4)
    s, pos, neg = torch.tensor(s), torch.tensor(pos), torch.tensor(neg)
    est = E.build("eta-mine").double()
    eta_star = est.closed_form_eta(s, pos, neg)
    assert eta_star.item() == pytest.approx(np_lme(s[neg].numpy()))
    losses = {}
    for delta in (-0.3, -0.01, 0.0, 0.01, 0.3):
        est.set_eta(eta_star + delta)
        losses[delta] = est(s, pos, neg).loss.item()
    assert min(losses, key=losses.get) == 0.0
    est.set_eta(eta_star)
    out = est(s, pos, neg)
    dv = E.build("dv-mine")(s, pos, neg)
    assert out.loss.item() == pytest.approx(dv.loss.item(), abs=1e-12)
    assert est.normaliser.item() == pytest.approx(1.0)
    (g,) = torch.autograd.grad(out.loss, est.eta)
    assert abs(g.item()) < 1e-10
    for eta in (-1.0, 0.5, 2.0):  # away from η*, η-MINE's estimate is strictly below DV's
        est.set_eta(eta)
        assert est(s, pos, neg).mi.item() < dv.mi.item()


def test_eta_mine_is_nwj_of_shifted_critic():
    s, pos, neg, _ = random_case(5)
    for eta in (-0.7, 0.0, 1.3):
        est = E.build("eta-mine", eta_init=eta)
        g = s + 1 - eta
        nwj = g[pos].mean() - np.mean(np.exp(g[neg] - 1))
        assert -est(torch.tensor(s), torch.tensor(pos), torch.tensor(neg)).loss.item() == pytest.approx(nwj)


def test_eta_schedule():
    est = E.build("eta-mine", n_critic=3)
    assert [est.eta_step_due(k) for k in range(6)] == [False, False, True, False, False, True]
    with pytest.raises(ValueError):
        E.build("eta-mine", n_critic=0)


def gaussian_pairs(n, d, rho, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y


def optimal_scores(x, y, rho):
    """f*(x_i, y_j) = log p(y_j | x_i) − log p(y_j) for y = ρx + √(1−ρ²)ε, as an [N, N] matrix."""
    d = x.shape[1]
    var = 1 - rho**2
    sq = ((y[None, :, :] - rho * x[:, None, :]) ** 2).sum(-1)
    return -sq / (2 * var) - 0.5 * d * math.log(var) + 0.5 * (y**2).sum(-1)[None, :]


@pytest.mark.parametrize("name", ALL)
def test_optimal_gaussian_critic_recovers_true_mi(name):
    d, rho, n = 2, 0.6, 1500
    true_mi = -0.5 * d * math.log(1 - rho**2)  # 0.446 nats
    x, y = gaussian_pairs(n, d, rho, seed=1)
    s = optimal_scores(x, y, rho)
    out = call(E.build(name), name, s, log_b=torch.zeros(n, dtype=torch.float64))
    assert out.mi.item() == pytest.approx(true_mi, abs=0.06)
    if name == "eta-mine":
        assert E.build("eta-mine").closed_form_eta(s).item() == pytest.approx(0.0, abs=0.05)


def test_infonce_is_capped_at_log_n():
    d, rho, n = 20, 0.95, 64
    true_mi = -0.5 * d * math.log(1 - rho**2)  # 23 nats, far above log 64
    x, y = gaussian_pairs(n, d, rho, seed=2)
    out = E.build("infonce")(optimal_scores(x, y, rho))
    assert out.mi.item() <= math.log(n) + 1e-9
    assert out.mi.item() == pytest.approx(math.log(n), abs=0.05)
    assert out.mi.item() < true_mi - 10


def test_short_eta_mine_training_reaches_true_mi():
    torch.manual_seed(0)
    d, rho = 2, 0.8
    true_mi = -0.5 * d * math.log(1 - rho**2)  # 1.02 nats

    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))

    g, h = mlp(), mlp()  # separable critic f(x, y) = <g(x), h(y)>
    est = E.build("eta-mine")
    opt = torch.optim.Adam([*g.parameters(), *h.parameters()], lr=2e-3)
    opt_eta = torch.optim.Adam([est.eta], lr=1e-2)
    for step in range(1500):
        x, y = (t.float() for t in gaussian_pairs(128, d, rho, seed=100 + step))
        loss = est(g(x) @ h(y).T).loss
        opt.zero_grad(), opt_eta.zero_grad()
        loss.backward()
        opt.step(), opt_eta.step()
    with torch.no_grad():
        test = [gaussian_pairs(512, d, rho, seed=10_000 + k) for k in range(4)]
        mis = [est(g(x.float()) @ h(y.float()).T).mi.item() for x, y in test]
    assert np.mean(mis) == pytest.approx(true_mi, abs=0.15)
    assert est.eta.item() == pytest.approx(0.0, abs=0.3)  # η* = 0 for the optimal critic


def test_convex_witness_on_quadratic_features():
    rho = 0.7
    true_mi = -0.5 * math.log(1 - rho**2)

    def features(x, y):  # f* for a 1-d Gaussian is a quadratic form in (x, y)
        return torch.stack([x * y, x * x, y * y], dim=-1)

    def joint_and_marg(seed, n):
        x, y = gaussian_pairs(n, 1, rho, seed)
        x, y = x[:, 0], y[:, 0]
        yp = torch.roll(y, 1)
        return features(x, y), torch.cat([features(x, yp), features(x, torch.roll(y, 7))])

    fit = fit_convex(*joint_and_marg(0, 4000))
    assert fit.grad_norm < 1e-6
    w_star = torch.tensor([rho / (1 - rho**2), -(rho**2) / (2 * (1 - rho**2)), -(rho**2) / (2 * (1 - rho**2))], dtype=torch.float64)
    torch.testing.assert_close(fit.w, w_star, atol=0.15, rtol=0.1)
    held_out = evaluate_convex(fit, *joint_and_marg(1, 4000))
    assert held_out == pytest.approx(true_mi, abs=0.05)
    assert fit.train_mi >= evaluate_convex(type(fit)(w=torch.zeros(3, dtype=torch.float64), eta=0.0, train_mi=0, grad_norm=0, iterations=0), *joint_and_marg(0, 4000))
