"""Gaussian mutual-information benchmark: every bound in ``pretrain.estimators`` against the truth.

    python -m experiments.mi_gaussian --protocol paper       # paper Fig. 3a: d = 2, 10, 20, 10 runs each
    python -m experiments.mi_gaussian --protocol staircase   # Poole et al. / Song & Ermon: 2→10 nats, d = 20
    python -m experiments.mi_gaussian --quick                # a small version of the paper protocol (< 1 min)

``paper``: for each dimension d, one Gaussian over (x, y) ∈ R^{2d} with a random mean μ ~ N(0, I)
and a random covariance Σ = A Aᵀ / (2d) + 0.1·I (A with N(0, 1) entries); true MI
½·log(det Σ_xx · det Σ_yy / det Σ). Each run draws its own 5,000 training and 1,000 test samples and
its own critic initialisation. Every estimator trains the same critic with the same steps and batch
(on all N×N pairs of a minibatch: diagonal = joint, the rest marginal); its estimate is then read
on the whole test set (1,000 joint pairs, 999,000 marginal pairs; so InfoNCE is capped at
log 1000 ≈ 6.9). ``eta-mine-convex`` refits a linear witness (and η) by a convex solver on the
features of each run's trained η-MINE critic and reports the bound on the test set.

``staircase``: d = 20, x ~ N(0, I), y = ρx + √(1−ρ²)ε with MI stepping through the levels, fresh
samples every step, batch 64, Adam 5e-4, 4,000 steps a level, a joint (concat) and a separable
critic; bias, variance and MSE of the per-batch estimates over each level's last 500 steps.

All critics of a protocol are trained at once as one batched network (``experiments.mi_gaussian.critics``).
η (η-MINE) is a scalar trained by its own Adam (lr 1e-2, as the paper); a-MINE's baseline η(y) is a
small MLP trained with the critic. Writes ``results.json``, ``results.md``, ``run.json`` (config,
command, wall time), PNG plots and TensorBoard scalars under ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import storage
from experiments.mean_std import mean_std, pm
from experiments.mi_gaussian import plots
from experiments.mi_gaussian.critics import BatchedMLP, build_critic
from experiments.settings import defaults_yaml, read_settings, require_counts
from pretrain import estimators
from pretrain.estimators.eta_mine_convex import evaluate_convex, fit_convex
from console.progress import bar as progress_bar

CONVEX = "eta-mine-convex"
PROTOCOLS = ("paper", "staircase")


# --------------------------------------------------------------------------------------------
# Configuration: the dataclasses are the one home of defaults; the command line overrides them.


@dataclass
class CriticTraining:
    """The critic's shape and the two learning rates every protocol of these experiments shares."""

    embed: int = 32  # the separable critic's g(x)ᵀh(y) width
    layers: int = 2
    lr: float = 5e-4  # Adam on the critic (and a-MINE's baseline)
    lr_eta: float = 1e-2  # Adam on η, as the paper (Appendix D)


@dataclass
class PaperConfig(CriticTraining):
    """Settings of the paper protocol (Fig. 3a). The paper leaves critic, steps and batch open."""

    estimators: list[str] = field(default_factory=lambda: estimators.names() + [CONVEX])
    dims: list[int] = field(default_factory=lambda: [2, 10, 20])
    runs: int = 10
    steps: int = 2000
    batch: int = 64
    n_train: int = 5000
    n_test: int = 1000
    critic: str = "separable"  # separable: a quadratic (Gaussian) log-ratio is exactly g(x)ᵀh(y) for embed ≥ d+2
    hidden: int = 128
    n_critic: int = 1  # Algorithm 1: critic steps per η step
    baseline_hidden: int = 64  # a-MINE's η(y): dim → 64 → 1
    eval_every: int = 250  # test-set read-outs for the convergence curves
    convex_shifts: int = 20  # marginal pairs for the convex fit: 20 derangements of the training set
    convex_l2: float = 1e-4
    seed: int = 0


@dataclass
class StaircaseConfig(CriticTraining):
    """Settings of the staircase protocol (Poole et al. 2019; Song & Ermon 2020)."""

    estimators: list[str] = field(default_factory=estimators.names)
    dim: int = 20
    levels: list[float] = field(default_factory=lambda: [2.0, 4.0, 6.0, 8.0, 10.0])
    steps: int = 4000  # per level
    window: int = 500  # bias / variance / MSE over each level's last `window` steps
    batch: int = 64
    critics: list[str] = field(default_factory=lambda: ["concat", "separable"])
    hidden_concat: int = 64  # Poole et al. use 256; a quarter, to fit the CPU budget (see README)
    hidden_separable: int = 256
    n_critic: int = 1
    baseline_hidden: int = 64
    log_every: int = 10  # TensorBoard scalars
    seed: int = 0


QUICK = {
    "paper": dict(dims=[2], runs=2, steps=200, batch=64, hidden=64, n_train=2000, n_test=500, eval_every=100, convex_shifts=5),
    "staircase": dict(dim=5, levels=[1.0, 2.0], steps=300, window=100, hidden_concat=32, hidden_separable=64),
}


# --------------------------------------------------------------------------------------------
# Gaussians with known MI.


def gaussian_mi(cov: torch.Tensor, dim: int) -> float:
    """True MI (nats) of a Gaussian over (x, y), cov [2d, 2d] with x = the first ``dim`` coordinates."""
    cov = cov.double()
    logdet = lambda m: torch.linalg.slogdet(m)[1]  # noqa: E731
    return float(0.5 * (logdet(cov[:dim, :dim]) + logdet(cov[dim:, dim:]) - logdet(cov)))


def random_gaussian(dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random mean [2d] ~ N(0, I) and covariance [2d, 2d] = A Aᵀ/(2d) + 0.1·I (float64)."""
    a = torch.randn(2 * dim, 2 * dim, generator=gen, dtype=torch.float64)
    cov = a @ a.T / (2 * dim) + 0.1 * torch.eye(2 * dim, dtype=torch.float64)
    mean = torch.randn(2 * dim, generator=gen, dtype=torch.float64)
    return mean, cov


def sample_gaussian(mean: torch.Tensor, cov: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Samples [*shape, 2d] (float32) of N(mean, cov)."""
    chol = torch.linalg.cholesky(cov)
    z = torch.randn(*shape, mean.shape[0], generator=gen, dtype=torch.float64)
    return (z @ chol.T + mean).float()


def staircase_rho(mi: float, dim: int) -> float:
    """Correlation ρ with MI(x; ρx + √(1−ρ²)ε) = mi for x, ε ~ N(0, I_dim): ρ = √(1 − e^{−2·mi/d})."""
    return math.sqrt(1.0 - math.exp(-2.0 * mi / dim))


def sample_correlated(batch: int, dim: int, rho: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I) [B, d] and y = ρx + √(1−ρ²)ε [B, d]."""
    x = torch.randn(batch, dim, generator=gen)
    eps = torch.randn(batch, dim, generator=gen)
    return x, rho * x + math.sqrt(1.0 - rho * rho) * eps


# --------------------------------------------------------------------------------------------
# Bounds for many critic copies at once.


class EstimatorBank(nn.Module):
    """One bound per critic copy: copy c = r·E + e holds bound ``names[e]`` of run r.

    a-MINE's baseline η(y) is a ``BatchedMLP`` with one copy per run.
    """

    def __init__(self, names: list[str], runs: int, dim: int, baseline_hidden: int, n_critic: int = 1):
        super().__init__()
        self.names, self.runs = list(names), runs
        self.bounds = nn.ModuleList(_build_bound(n, n_critic) for _ in range(runs) for n in names)
        self.baseline = BatchedMLP(runs, dim, baseline_hidden, 1, layers=1) if "a-mine" in names else None

    @property
    def copies(self) -> int:
        return len(self.bounds)

    def forward(self, scores: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scores [C, N, M], y [R, M, d] (the y of each run), masks [N, M] -> (summed loss [], mi [C] float64)."""
        log_baseline = self.baseline(y).squeeze(-1) if self.baseline is not None else None  # [R, M]
        n_names = len(self.names)
        losses, mis = [], []
        for c, bound in enumerate(self.bounds):
            extra = {"log_baseline": log_baseline[c // n_names]} if self.names[c % n_names] == "a-mine" else {}
            out = bound(scores[c], pos, neg, **extra)
            losses.append(out.loss)
            mis.append(out.mi)
        return torch.stack(losses).sum(), torch.stack(mis)

    def eta_names(self) -> list[str]:
        """The η-MINE bounds among ``names`` (they also report a refit and η − η*)."""
        return [n for n, b in zip(self.names, self.bounds) if isinstance(b, estimators.EtaMINE)]

    def eta_readouts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """After a call: per copy the refit estimate (η = log mean_marg e^f of the same pairs) and
        η − η* (η* that closed form), each [C] float64, NaN for bounds without η."""
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        eta = [b.metrics() if isinstance(b, estimators.EtaMINE) else None for b in self.bounds]
        refit = torch.stack([m["mi/refit"].double() if m else nan for m in eta])
        gap = torch.stack([-torch.log(m["normaliser"].double()) if m else nan for m in eta])  # e^{-η}·mean e^f = e^{η*−η}
        return refit, gap


def _build_bound(name: str, n_critic: int) -> nn.Module:
    """The registered bound ``name``; η-MINE bounds get Algorithm 1's ``n_critic``."""
    return estimators.build(name, **({"n_critic": n_critic} if estimators.capabilities(name).has_eta else {}))


def pair_initialisation(critic: nn.Module, runs: int) -> None:
    """Give the E copies of each run the same initial weights (copy r·E of the run), so that the
    bounds of a run are compared on the same data from the same initial critic."""
    with torch.no_grad():
        for p in critic.parameters():
            view = p.view(runs, p.shape[0] // runs, *p.shape[1:])
            view.copy_(view[:, :1].expand_as(view))


def diagonal_masks(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint = diagonal, marginal = the rest, each [n, n] bool."""
    pos = torch.eye(n, dtype=torch.bool)
    return pos, ~pos


def make_optimisers(critic: nn.Module, bank: EstimatorBank, lr: float, lr_eta: float) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """Adam on critic + a-MINE baseline (lr), Adam on the bounds' own parameters, i.e. η (lr_eta).

    Adam is element-wise, so one optimiser over [C, ...] weights equals C independent ones."""
    params = list(critic.parameters()) + (list(bank.baseline.parameters()) if bank.baseline is not None else [])
    eta_params = list(bank.bounds.parameters())
    return torch.optim.Adam(params, lr=lr), (torch.optim.Adam(eta_params, lr=lr_eta) if eta_params else None)



def critic_step(loss: torch.Tensor, opt: torch.optim.Optimizer, opt_eta: torch.optim.Optimizer | None, bounds: nn.Module, step: int) -> None:
    """One optimiser step on ``loss`` (the critic's, from :func:`make_optimisers`), then η's step as
    the bounds' schedule says (``pretrain.estimators.eta_step``; ``bounds`` holds them)."""
    opt.zero_grad(set_to_none=True)
    if opt_eta is not None:
        opt_eta.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    estimators.eta_step(bounds, opt_eta, step)

@torch.no_grad()
def all_pair_scores(critic: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int = 2**25) -> torch.Tensor:
    """x [C, N, d], y [C, M, d] -> scores [C, N, M], in row chunks whose activations stay under ``budget`` floats."""
    c, n, m = x.shape[0], x.shape[1], y.shape[1]
    width = getattr(critic, "w_out", None)
    if width is None:  # separable: N + M tower rows, no pairwise activations
        return critic.scores(x, y)
    rows = max(1, budget // (c * m * width.shape[1]))
    return torch.cat([critic.scores(x[:, i : i + rows], y) for i in range(0, n, rows)], dim=1)


# --------------------------------------------------------------------------------------------
# Paper protocol.


def _trained_names(names: list[str]) -> list[str]:
    """Bounds with their own critic (η-MINE-convex reuses η-MINE's)."""
    trained = [n for n in names if n != CONVEX]
    if CONVEX in names and "eta-mine" not in trained:
        trained.append("eta-mine")
    return trained


def _report_order(names: list[str], eta_names: list[str]) -> list[str]:
    """Rows of results.json: each bound, an η-MINE bound followed by its refit."""
    return [m for n in names for m in ([n, f"{n}/refit"] if n in eta_names else [n])]


@torch.no_grad()
def _test_estimates(critic, bank: EstimatorBank, x_test: torch.Tensor, y_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each copy's bound on the whole test set, x_test, y_test [R, N, d] -> (mi, refit, η − η*),
    each [C] float64 (the last two NaN for bounds without η)."""
    e = len(bank.names)
    xc, yc = x_test.repeat_interleave(e, 0), y_test.repeat_interleave(e, 0)
    scores = all_pair_scores(critic, xc, yc)
    pos, neg = diagonal_masks(x_test.shape[1])
    was_training = bank.training
    bank.eval()  # dv-mine-ema keeps its moving average still
    _, mi = bank(scores, y_test, pos, neg)
    bank.train(was_training)
    return (mi, *bank.eta_readouts())


@torch.no_grad()
def _features(critic, x: torch.Tensor, y: torch.Tensor, copy: int, chunk: int = 65536) -> torch.Tensor:
    """Φ of aligned pairs x, y [P, d] under critic copy ``copy`` -> [P, K], in chunks."""
    sel = slice(copy, copy + 1)
    return torch.cat([critic.pair_features(x[None, i : i + chunk], y[None, i : i + chunk], sel)[0] for i in range(0, x.shape[0], chunk)])


def _convex_estimate(critic, copy: int, x_tr, y_tr, x_te, y_te, shifts: int, l2: float, gen: torch.Generator) -> tuple[float, float]:
    """Fit η-MINE-convex on training features of one critic copy, return (test bound, train bound).

    Training marginal pairs: ``shifts`` derangements (x_{π(i)}, y_{π(i+k)}), k ≠ 0; test marginal
    pairs: every (x_i, y_j), i ≠ j, as for the other bounds."""
    n = x_tr.shape[0]
    perm = torch.randperm(n, generator=gen)
    ks = torch.randperm(n - 1, generator=gen)[:shifts] + 1
    xi = perm.repeat(len(ks))
    yi = torch.cat([perm.roll(-int(k)) for k in ks])
    fit = fit_convex(_features(critic, x_tr, y_tr, copy), _features(critic, x_tr[xi], y_tr[yi], copy), l2=l2)
    off = ~torch.eye(x_te.shape[0], dtype=torch.bool)
    sel = slice(copy, copy + 1)
    with torch.no_grad():
        grid = torch.cat([critic.grid_features(x_te[None, i : i + 100], y_te[None], sel)[0] for i in range(0, x_te.shape[0], 100)])
    test = evaluate_convex(fit, grid[~off], grid[off])  # [N, N, K] -> joint [N, K], marginal [N(N-1), K]
    return test, fit.train_mi


def run_paper_dim(cfg: PaperConfig, dim: int, gen: torch.Generator, writer, bar) -> tuple[list[dict], dict]:
    """Train every bound ``cfg.runs`` times on one random Gaussian of dimension ``dim``.

    Returns (rows of results.json, convergence curves {name: {"step": [...], "mean": [...], "std": [...]}})."""
    names = _trained_names(cfg.estimators)
    e, r, d = len(names), cfg.runs, dim
    mean, cov = random_gaussian(d, gen)
    true_mi = gaussian_mi(cov, d)
    train = sample_gaussian(mean, cov, (r, cfg.n_train), gen)
    test = sample_gaussian(mean, cov, (r, cfg.n_test), gen)
    x_tr, y_tr, x_te, y_te = train[..., :d], train[..., d:], test[..., :d], test[..., d:]

    critic = build_critic(cfg.critic, r * e, d, cfg.hidden, cfg.embed, cfg.layers)
    pair_initialisation(critic, r)
    bank = EstimatorBank(names, r, d, cfg.baseline_hidden, cfg.n_critic)
    eta_names = bank.eta_names()
    shown = names + [f"{n}/refit" for n in eta_names]
    opt, opt_eta = make_optimisers(critic, bank, cfg.lr, cfg.lr_eta)
    pos, neg = diagonal_masks(cfg.batch)
    per_epoch = cfg.n_train // cfg.batch
    curves = {n: {"step": [], "runs": [], "mean": [], "std": []} for n in shown}
    for n in eta_names:
        curves[n]["eta_minus_eta_star"] = []  # per evaluation, per run: η − log mean_marg e^f on the test pairs
    order = None
    for step in range(cfg.steps):
        k = step % per_epoch
        if k == 0:  # a fresh shuffle of each run's training set
            order = torch.argsort(torch.rand(r, cfg.n_train, generator=gen), dim=1)
        idx = order[:, k * cfg.batch : (k + 1) * cfg.batch, None].expand(-1, -1, d)
        xb, yb = torch.gather(x_tr, 1, idx), torch.gather(y_tr, 1, idx)  # [R, B, d]
        scores = critic.scores(xb.repeat_interleave(e, 0), yb.repeat_interleave(e, 0))
        loss, mi = bank(scores, yb, pos, neg)
        critic_step(loss, opt, opt_eta, bank, step)
        if step % 50 == 0 and writer is not None:
            for i, n in enumerate(names):
                writer.add_scalar(f"paper/d{d}/train/{n}", float(mi.view(r, e)[:, i].mean()), step)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            est, refit, gap = (v.view(r, e) for v in _test_estimates(critic, bank, x_te, y_te))
            columns = {n: est[:, i] for i, n in enumerate(names)}
            columns.update({f"{n}/refit": refit[:, names.index(n)] for n in eta_names})
            for n, values in columns.items():
                curves[n]["step"].append(step + 1)
                curves[n]["runs"].append([float(v) for v in values])
                mean, std = mean_std(values.tolist())
                curves[n]["mean"].append(mean)
                curves[n]["std"].append(std)
                if writer is not None:
                    writer.add_scalar(f"paper/d{d}/test/{n}", curves[n]["mean"][-1], step + 1)
            for n in eta_names:
                curves[n]["eta_minus_eta_star"].append([float(v) for v in gap[:, names.index(n)]])
                if writer is not None:
                    writer.add_scalar(f"paper/d{d}/eta_minus_eta_star/{n}", float(gap[:, names.index(n)].mean()), step + 1)
            if writer is not None:
                writer.add_scalar(f"paper/d{d}/true_mi", true_mi, step + 1)
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix_str(f"d={d} true={true_mi:.2f} " + " ".join(f"{n}={float(mi.view(r, e)[:, i].mean()):.2f}" for i, n in enumerate(names[:3])), refresh=False)

    estimates = {n: curves[n]["runs"][-1] for n in shown}
    if CONVEX in cfg.estimators:
        j = names.index("eta-mine")
        estimates[CONVEX] = [
            _convex_estimate(critic, run * e + j, x_tr[run], y_tr[run], x_te[run], y_te[run], cfg.convex_shifts, cfg.convex_l2, gen)[0]
            for run in range(r)
        ]
        if writer is not None:
            writer.add_scalar(f"paper/d{d}/test/{CONVEX}", float(np.mean(estimates[CONVEX])), cfg.steps)
    rows = []
    for n in _report_order(cfg.estimators, eta_names):
        values = np.array(estimates[n])
        rows.append(
            {
                "estimator": n,
                "dim": d,
                "true_mi": true_mi,
                "estimates": values.tolist(),
                **dict(zip(("mean", "std"), mean_std(values))),
            }
        )
    return rows, curves


def run_paper(cfg: PaperConfig, writer=None, progress: bool = True, on_rows=None) -> tuple[list[dict], dict]:
    """All dims of the paper protocol -> (results.json rows, {dim: curves}).

    ``on_rows(rows)`` (optional) receives the rows so far after each dimension."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rows, curves = [], {}
    with progress_bar(total=len(cfg.dims) * cfg.steps, desc="paper", enabled=progress) as bar:
        for d in cfg.dims:
            dim_rows, curves[d] = run_paper_dim(cfg, d, gen, writer, bar)
            rows += dim_rows
            if on_rows is not None:
                on_rows(rows)
    return rows, curves


# --------------------------------------------------------------------------------------------
# Staircase protocol.


def level_stats(trace: np.ndarray, true_mi: float) -> dict:
    """Per-batch estimates [T] of one level's window -> {true_mi, mean, bias, var, mse}."""
    mean = float(trace.mean())
    return {
        "true_mi": float(true_mi),
        "mean": mean,
        "bias": mean - true_mi,
        "var": float(trace.var()),
        "mse": float(((trace - true_mi) ** 2).mean()),
    }


def run_staircase(cfg: StaircaseConfig, writer=None, progress: bool = True, on_rows=None) -> tuple[list[dict], dict]:
    """Train every bound with each critic through the MI levels.

    Returns (results.json rows, traces {critic: float64 array [S, levels·steps]}) where the S
    series are ``staircase_series(cfg.estimators)`` (each bound, η-MINE bounds followed by their
    per-batch refit); ``on_rows(rows)`` (optional) receives the rows so far after each level."""
    if CONVEX in cfg.estimators:
        raise ValueError(f"{CONVEX} is fitted offline on a trained critic: use it with --protocol paper")
    if cfg.window > cfg.steps:
        raise ValueError(f"window ({cfg.window}) must not exceed the steps per level ({cfg.steps})")
    names, d, e = list(cfg.estimators), cfg.dim, len(cfg.estimators)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    hidden = {"concat": cfg.hidden_concat, "separable": cfg.hidden_separable}
    critics = {k: build_critic(k, e, d, hidden[k], cfg.embed, cfg.layers) for k in cfg.critics}
    for critic in critics.values():
        pair_initialisation(critic, 1)
    banks = {k: EstimatorBank(names, 1, d, cfg.baseline_hidden, cfg.n_critic) for k in cfg.critics}
    series = staircase_series(names)
    eta_rows = [i for i, n in enumerate(names) if f"{n}/refit" in series]
    refit_rows = [series.index(f"{names[i]}/refit") for i in eta_rows]
    mi_rows = [series.index(n) for n in names]
    opts = {k: make_optimisers(critics[k], banks[k], cfg.lr, cfg.lr_eta) for k in cfg.critics}
    pos, neg = diagonal_masks(cfg.batch)
    total = len(cfg.levels) * cfg.steps
    traces = {k: np.zeros((len(series), total)) for k in cfg.critics}
    rows = []
    with progress_bar(total=total, desc="staircase", enabled=progress) as bar:
        for step in range(total):
            level = cfg.levels[step // cfg.steps]
            x, y = sample_correlated(cfg.batch, d, staircase_rho(level, d), gen)
            xe, ye = x.expand(e, -1, -1), y.expand(e, -1, -1)
            loss = 0.0
            for k in cfg.critics:
                k_loss, mi = banks[k](critics[k].scores(xe, ye), y[None], pos, neg)
                loss = loss + k_loss
                traces[k][mi_rows, step] = mi.numpy()
                traces[k][refit_rows, step] = banks[k].eta_readouts()[0][eta_rows].numpy()
            for opt, opt_eta in opts.values():
                opt.zero_grad(set_to_none=True)
                if opt_eta is not None:
                    opt_eta.zero_grad(set_to_none=True)
            loss.backward()
            for k, (opt, opt_eta) in opts.items():
                opt.step()
                estimators.eta_step(banks[k], opt_eta, step)
            if writer is not None and step % cfg.log_every == 0:
                writer.add_scalar("staircase/true_mi", level, step)
                for k in cfg.critics:
                    for i, n in enumerate(series):
                        writer.add_scalar(f"staircase/{k}/{n}", traces[k][i, step], step)
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix_str(f"true={level:g} " + " ".join(f"{k[:3]}/{n}={traces[k][i, step]:.2f}" for k in cfg.critics for i, n in enumerate(names[:2])), refresh=False)
            if (step + 1) % cfg.steps == 0:
                li, end = step // cfg.steps, step + 1
                for k in cfg.critics:
                    for i, n in enumerate(series):
                        rows.append({"estimator": n, "critic": k, "level": li + 1, **level_stats(traces[k][i, end - cfg.window : end], level)})
                if on_rows is not None:
                    on_rows(rows)
    rows.sort(key=lambda r: (cfg.critics.index(r["critic"]), series.index(r["estimator"]), r["level"]))
    return rows, traces


def staircase_series(names: list[str]) -> list[str]:
    """The staircase's per-batch series: each bound, an η-MINE bound followed by its refit."""
    return _report_order(names, [n for n in names if estimators.capabilities(n).has_eta])


# --------------------------------------------------------------------------------------------
# Reports: markdown, plots.


def paper_markdown(rows: list[dict]) -> str:
    """results.json rows of the paper protocol -> a markdown table (estimators × dims)."""
    dims = sorted({r["dim"] for r in rows})
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    by = {(r["estimator"], r["dim"]): r for r in rows}
    truth = {d: next(r["true_mi"] for r in rows if r["dim"] == d) for d in dims}
    head = "| estimator | " + " | ".join(f"d = {d} (true {truth[d]:.3f})" for d in dims) + " |"
    lines = [head, "|---" * (len(dims) + 1) + "|"]
    for n in names:
        cells = []
        for d in dims:
            r = by.get((n, d))
            cells.append(pm(r["mean"], r["std"]) if r else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_markdown(rows: list[dict], reference: str = "dv-mine") -> str:
    """Paired comparison with ``reference``: run r of every bound shares data and initial critic,
    so the per-run differences are tested (paired t-test and Wilcoxon signed-rank, scipy)."""
    from scipy import stats

    by = {(r["estimator"], r["dim"]): np.array(r["estimates"]) for r in rows}
    names = [n for n in dict.fromkeys(r["estimator"] for r in rows) if n != reference]
    dims = sorted({d for n, d in by if n == reference})
    if not dims or len(by[(reference, dims[0])]) < 3:
        return ""
    lines = [f"Paired differences (bound − {reference}, per run), mean ± std, wins, paired t-test p, Wilcoxon p:\n",
             "| estimator | " + " | ".join(f"d = {d}" for d in dims) + " |", "|---" * (len(dims) + 1) + "|"]
    for n in names:
        cells = []
        for d in dims:
            if (n, d) not in by:
                cells.append("")
                continue
            diff = by[(n, d)] - by[(reference, d)]
            t_p = stats.ttest_rel(by[(n, d)], by[(reference, d)]).pvalue
            w_p = stats.wilcoxon(diff).pvalue if np.any(diff != 0) else 1.0
            cells.append(f"{pm(*mean_std(diff), sign='+')}, {int((diff > 0).sum())}/{len(diff)}, p {t_p:.2g}, {w_p:.2g}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def staircase_markdown(rows: list[dict]) -> str:
    """results.json rows of the staircase protocol -> one table per critic, cells bias / var / MSE."""
    out = []
    for k in dict.fromkeys(r["critic"] for r in rows):
        sub = [r for r in rows if r["critic"] == k]
        levels = sorted({(r["level"], r["true_mi"]) for r in sub})
        out.append(f"**{k} critic** (bias / variance / MSE over each level's window)\n")
        out.append("| estimator | " + " | ".join(f"MI = {t:g}" for _, t in levels) + " |")
        out.append("|---" * (len(levels) + 1) + "|")
        for n in dict.fromkeys(r["estimator"] for r in sub):
            cells = {r["level"]: r for r in sub if r["estimator"] == n}
            out.append(f"| {n} | " + " | ".join(f"{cells[l]['bias']:+.2f} / {cells[l]['var']:.2f} / {cells[l]['mse']:.2f}" for l, _ in levels) + " |")
        out.append("")
    return "\n".join(out)


def traces_json(traces: dict, cfg: StaircaseConfig, every: int = 10) -> dict:
    """Per-batch traces {critic: [S, T]} -> JSON-ready block means over ``every`` steps."""
    series = staircase_series(cfg.estimators)
    blocks = {k: v.reshape(v.shape[0], -1, every).mean(axis=2) for k, v in traces.items()}
    return {"every": every, "levels": list(cfg.levels), "steps": cfg.steps, "series": series,
            "critics": {k: {n: [round(float(x), 4) for x in b[i]] for i, n in enumerate(series)} for k, b in blocks.items()}}


# --------------------------------------------------------------------------------------------
# Command line: the dataclasses hold the defaults; key=value overrides (OmegaConf).


def _defaults_text() -> str:
    return "\n".join(f"--protocol {p} defaults (override with key=value):\n" + defaults_yaml(c) for p, c in (("paper", PaperConfig), ("staircase", StaircaseConfig)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.mi_gaussian", description=__doc__.split("\n\n")[0], epilog=_defaults_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper", help="paper: Fig. 3a (d = 2, 10, 20); staircase: Poole et al.'s 2→10 nats")
    p.add_argument("--quick", action="store_true", help="a small, fast version (< 1 min) for demos and smoke tests")
    p.add_argument("--out", help="output directory (default runs/mi_gaussian/<protocol>; local only)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings of the protocol's config, e.g. runs=10 dims=[10,20] estimators=[eta-mine,dv-mine]")
    return p


def load_config(protocol: str, overrides: list[str] = (), quick: bool = False) -> PaperConfig | StaircaseConfig:
    """Dataclass defaults <- ``QUICK`` (with ``quick``) <- ``key=value`` overrides, checked.

    Raises ValueError with one line naming the setting on an unknown key, a wrong type or a bad
    combination."""
    schema = PaperConfig if protocol == "paper" else StaircaseConfig
    cfg = read_settings(schema, list(overrides), QUICK[protocol] if quick else None, context=f"--protocol {protocol}")
    known = estimators.names() + ([CONVEX] if protocol == "paper" else [])
    unknown = [n for n in cfg.estimators if n not in known]
    if unknown or not cfg.estimators:
        raise ValueError(f"unknown estimator(s) {', '.join(unknown) or '(none given)'} for --protocol {protocol}; known: {', '.join(known)}")
    cfg.estimators = list(dict.fromkeys(cfg.estimators))
    counts = ("runs", "steps", "batch", "n_train", "n_test", "eval_every") if protocol == "paper" else ("dim", "steps", "window", "batch")
    require_counts(cfg, counts)
    if protocol == "paper":
        if not cfg.dims or min(cfg.dims) < 1:
            raise ValueError(f"dims must be positive integers, got {cfg.dims}")
        if cfg.batch > cfg.n_train:
            raise ValueError(f"batch {cfg.batch} exceeds the {cfg.n_train} training samples (n_train)")
        cfg.eval_every = min(cfg.eval_every, cfg.steps)
    else:
        cfg.window = min(cfg.window, cfg.steps)
        if cfg.steps % 10:
            raise ValueError(f"steps per level must be a multiple of 10 (traces.json keeps 10-step means), got {cfg.steps}")
        bad = [k for k in cfg.critics if k not in ("concat", "separable")]
        if bad or not cfg.critics:
            raise ValueError(f"unknown critic(s) {', '.join(bad) or '(none given)'}; choose from concat, separable")
    return cfg


def run(protocol: str, cfg: PaperConfig | StaircaseConfig, out: Path, progress: bool = True, command: str | None = None) -> list[dict]:
    """Run one protocol and write results.json, results.md, run.json, curves.json or traces.json,
    PNG plots and TensorBoard scalars to ``out``."""
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    partial = lambda rows: (out / "results.partial.json").write_text(json.dumps(rows, indent=1))  # noqa: E731
    with SummaryWriter(str(out / "tensorboard")) as writer:
        if protocol == "paper":
            rows, curves = run_paper(cfg, writer, progress, partial)
        else:
            rows, traces = run_staircase(cfg, writer, progress, partial)
    (out / "results.partial.json").unlink(missing_ok=True)
    wall = time.time() - start
    command = command or "python -m experiments.mi_gaussian " + shlex.join(sys.argv[1:])
    meta = {"protocol": protocol, "command": command, "wall_s": round(wall, 1), "cpu_s": round(time.process_time(), 1), "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "config": dataclasses.asdict(cfg)}
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "run.json").write_text(json.dumps(meta, indent=1))
    if protocol == "paper":
        curves = {str(d): c for d, c in curves.items()}
        (out / "curves.json").write_text(json.dumps(curves))
        table = paper_markdown(rows) + "\n\n" + paired_markdown(rows)
        plots.plot_paper(rows, curves, out)
        setting = (
            f"{cfg.critic} critic (hidden {cfg.hidden} × {cfg.layers}" + (f", embedding {cfg.embed}" if cfg.critic == "separable" else "") + f"), "
            f"{cfg.steps} steps, batch {cfg.batch} (all {cfg.batch}×{cfg.batch} pairs), Adam {cfg.lr:g} (η: {cfg.lr_eta:g}), "
            f"{cfg.runs} runs (run r of every bound: same data, same initial critic), {cfg.n_train} train / {cfg.n_test} test samples; "
            "test-set estimate mean ± std over runs; `/refit`: the same critic with η in closed form on the test pairs"
        )
    else:
        trace_data = traces_json(traces, cfg)
        (out / "traces.json").write_text(json.dumps(trace_data))
        table = staircase_markdown(rows)
        plots.plot_staircase(trace_data, out)
        setting = (
            f"d = {cfg.dim}, levels {', '.join(f'{v:g}' for v in cfg.levels)} nats, {cfg.steps} steps a level, batch {cfg.batch}, "
            f"Adam {cfg.lr:g} (η: {cfg.lr_eta:g}); concat critic hidden {cfg.hidden_concat} × {cfg.layers}, separable hidden "
            f"{cfg.hidden_separable} × {cfg.layers} → {cfg.embed}; every bound starts from the same critic; statistics over each "
            f"level's last {cfg.window} steps; `/refit`: the per-batch estimate with η in closed form on the batch"
        )
    (out / "results.md").write_text(f"# Gaussian MI benchmark, {protocol} protocol\n\n`{command}`\n\n{setting}. Wall time {wall / 60:.1f} min, CPU time {time.process_time() / 60:.1f} min ({torch.get_num_threads()} thread(s)).\n\n{table}\n")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args.protocol, args.overrides, args.quick)
        out = storage.local_only(args.out, "--out") if args.out else None
    except (ValueError, storage.StorageError) as err:
        parser().error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    out = out or Path("runs/mi_gaussian") / (args.protocol + ("-quick" if args.quick else ""))
    rows = run(args.protocol, cfg, out, progress=not args.no_progress, command="python -m experiments.mi_gaussian " + shlex.join(argv if argv is not None else sys.argv[1:]))
    print((out / "results.md").read_text())
    print(f"written to {out}/")
    return rows


if __name__ == "__main__":
    main()
