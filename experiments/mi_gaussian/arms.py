"""Controlled arms: what makes η-MINE trail DV-MINE on the paper protocol (docs/bounds.md).

The η-MINE critic gradient is exactly the DV-MINE gradient plus one scalar times one direction,

    ∇L_η = ∇L_DV + (e^{−η}·Ẑ_b − 1)·∇log Ẑ_b,      Ẑ_b = mean_marg e^f over the batch's marginal pairs,

so the whole difference is the scalar s = e^{−η}·Ẑ_b − 1: its mean over training is η's lag, its
spread the minibatch noise. Each arm changes one of these, on the same data, from the same initial
critic (run r of every arm is paired):

- the registered bounds (``eta-mine``, ``eta-mine-ema``, ``eta-mine-clip``, ``dv-mine``, ``dv-mine-ema``);
- ``eta-mine/oracle``: η-MINE whose η is η* = log mean_marg e^f over the training set (every one of
  the 5,000 training x against ``z_columns`` random training y: 5M marginal pairs, 1,200 times a
  batch's), recomputed every ``refresh`` steps (η has no gradient): lag removed up to the refresh, noise kept;
- ``dv-mine/noise``: DV-MINE plus (r − 1)·log Ẑ_b in the loss, r a detached scalar drawn from the
  measured Ẑ_b/Z of its own critic (Z as the oracle's, Ẑ_b over ``noise_batches``
  random minibatches of the training set, measured every ``refresh`` steps): η-MINE's noise added
  to DV-MINE, with no lag;
- ``<bound>@N`` and ``<bound>@4N``: the marginal term over N pairs (x_i, y_σ(i)) of one random
  derangement σ a step (the paper's Algorithm 1 permutes the rows of Y) or over 4N pairs of four
  such shifts, instead of all N(N−1) off-diagonal pairs of the batch.

Every arm is read out the same way every ``eval_every`` steps: its own bound on the 1,000 held-out
pairs (all 999,000 marginal pairs); η-MINE arms also report the refit (η in closed form on those
pairs). During training the arms of the η-MINE family record s per step; ``curves.json`` keeps, per
evaluation interval and run, the mean of s (lag) and its standard deviation (noise).

    python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-d20 dim=20 runs=20
    python -m experiments.mi_gaussian.arms --quick --out /tmp/arms      # 2 runs, 120 steps, d = 4
    python -m experiments.mi_gaussian.analysis experiments/mi_gaussian/results/arms-d20   # the tables
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from experiments.mi_gaussian.benchmark import (
    CriticTraining,
    critic_step,
    diagonal_masks,
    gaussian_mi,
    pair_initialisation,
    random_gaussian,
    sample_gaussian,
)
from experiments.mi_gaussian.critics import build_critic
from experiments.settings import read_settings, require_counts, run_command_line
from pretrain import estimators
from pretrain.estimators.base import masked_log_mean_exp, masks_checked

PAIRINGS = {"": 0, "@N": 1, "@4N": 4}  # suffix -> derangements per step (0: all N(N−1) pairs)
SPECIAL = ("eta-mine/oracle", "dv-mine/noise")


@dataclass
class ArmsConfig(CriticTraining):
    """Settings of the controlled arms (the paper protocol of ``experiments.mi_gaussian``)."""

    arms: list[str] = field(default_factory=lambda: [
        "eta-mine", "eta-mine-ema", "eta-mine-clip", "dv-mine", "dv-mine-ema",
        "eta-mine/oracle", "dv-mine/noise", "eta-mine@N", "eta-mine@4N", "dv-mine@N", "dv-mine@4N"])
    dim: int = 20
    runs: int = 20
    steps: int = 4000
    batch: int = 64
    n_train: int = 5000
    n_test: int = 1000
    hidden: int = 128
    eval_every: int = 250
    refresh: int = 25  # steps between oracle η* (and the noise arm's Ẑ_b/Z) measurements; at 200, η* moved 0.19 nats between them
    z_columns: int = 1000  # Z = mean e^f over every training x against this many training y (5M pairs)
    noise_batches: int = 64  # minibatches that measure Ẑ_b/Z at each refresh
    seed: int = 0


QUICK = dict(dim=4, runs=2, steps=120, n_train=400, z_columns=100, n_test=200, hidden=32, embed=8, eval_every=40, refresh=30, noise_batches=8)


def parse_arm(arm: str) -> tuple[str, str, int]:
    """``eta-mine@4N`` -> (bound ``eta-mine``, special ``""``, derangements 4); ``eta-mine/oracle`` ->
    (``eta-mine``, ``oracle``, 0). Raises ValueError naming the arm when it is unknown."""
    bound, special = (arm.split("/", 1) + [""])[:2] if arm in SPECIAL else (arm, "")
    shifts = 0
    for suffix, k in PAIRINGS.items():
        if suffix and bound.endswith(suffix):
            bound, shifts = bound[: -len(suffix)], k
    if bound not in estimators.names() or (special and shifts):
        raise ValueError(f"unknown arm {arm!r}: a registered bound ({', '.join(estimators.names())}), optionally with "
                         f"@N or @4N, or one of {', '.join(SPECIAL)}")
    return bound, special, shifts


def derangement_masks(n: int, shifts: int, gen: torch.Generator) -> torch.Tensor:
    """Marginal mask [n, n]: pairs (π(i), π(i+k)) for a random permutation π and ``shifts`` distinct
    shifts k ∈ {1 … n−1}: n·shifts distinct off-diagonal pairs, each row and column used ``shifts`` times."""
    perm = torch.randperm(n, generator=gen)
    ks = torch.randperm(n - 1, generator=gen)[:shifts] + 1
    mask = torch.zeros(n, n, dtype=torch.bool)
    for k in ks.tolist():
        mask[perm, perm.roll(-k)] = True
    return mask


@torch.no_grad()
def full_log_z(critic, copies: list[int], x: torch.Tensor, y: torch.Tensor, z_columns: int, noise_batches: int,
               batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each critic copy in ``copies`` (x, y [len, n, d], that copy's training set):
    log Z = log mean e^f over every training x against ``z_columns`` random training y (n × z_columns
    pairs less the joint ones), and log(Ẑ_b/Z) for ``noise_batches`` random minibatches of ``batch``
    samples (all their off-diagonal pairs). -> ([len] float64, [len, noise_batches] float64)."""
    n = x.shape[1]
    log_z, ratios = [], []
    eye = torch.eye(batch, dtype=torch.bool)
    for j, c in enumerate(copies):
        sel = slice(c, c + 1)
        cols = torch.randperm(n, generator=gen)[:z_columns]
        gx = critic.g(x[j : j + 1], sel)[0]  # [n, embed]
        hy = critic.h(y[j : j + 1, cols], sel)[0]  # [m, embed]
        f = gx @ hy.T  # [n, m]; f[cols[k], k] are joint pairs
        f[cols, torch.arange(len(cols))] = float("-inf")
        lz = torch.logsumexp(f.flatten(), 0).double() - math.log(n * len(cols) - len(cols))
        idx = torch.stack([torch.randperm(n, generator=gen)[:batch] for _ in range(noise_batches)])  # [K, B]
        sub = torch.bmm(gx[idx], critic.h(y[j : j + 1, idx.flatten()], sel)[0].view(noise_batches, batch, -1).transpose(1, 2))
        lb = torch.logsumexp(sub.masked_fill(eye, float("-inf")).flatten(1), 1).double() - math.log(batch * (batch - 1))
        log_z.append(lz)
        ratios.append(lb - lz)
    return torch.stack(log_z), torch.stack(ratios)


def run_arms(cfg: ArmsConfig, out: Path | None = None, log=print) -> dict:
    """Train every arm ``cfg.runs`` times on one paper-protocol Gaussian; return (and, with ``out``,
    write after every evaluation) the curves: {arm: {"step": [...], "runs": [[per run]], "refit",
    "s_mean", "s_std"}} with the setting."""
    parsed = [parse_arm(a) for a in cfg.arms]
    a_n, r, d = len(cfg.arms), cfg.runs, cfg.dim
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    mean, cov = random_gaussian(d, gen)  # the same Gaussian as `python -m experiments.mi_gaussian dims=[d]`
    true_mi = gaussian_mi(cov, d)
    train = sample_gaussian(mean, cov, (r, cfg.n_train), gen)
    test = sample_gaussian(mean, cov, (r, cfg.n_test), gen)
    x_tr, y_tr, x_te, y_te = train[..., :d], train[..., d:], test[..., :d], test[..., d:]

    critic = build_critic("separable", r * a_n, d, cfg.hidden, cfg.embed, cfg.layers)
    pair_initialisation(critic, r)
    bounds = torch.nn.ModuleList(estimators.build(b) for _ in range(r) for b, _, _ in parsed)
    oracle = [c for c in range(r * a_n) if parsed[c % a_n][1] == "oracle"]
    noisy = [c for c in range(r * a_n) if parsed[c % a_n][1] == "noise"]
    for c in oracle:
        bounds[c].eta.requires_grad_(False)
    measured = oracle + noisy
    noise_pool = torch.zeros(r * a_n, cfg.noise_batches)  # log(Ẑ_b/Z) of the last measurement, per copy

    # as make_optimisers: Adam on the critic, Adam on η (the oracle's η has no gradient, Adam skips it)
    opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr)
    eta_params = list(bounds.parameters())
    opt_eta = torch.optim.Adam(eta_params, lr=cfg.lr_eta) if eta_params else None
    pos, all_neg = diagonal_masks(cfg.batch)
    is_eta = [isinstance(b, estimators.EtaMINE) for b in bounds]
    s_sum = torch.zeros(r * a_n, dtype=torch.float64)
    s_sq = torch.zeros(r * a_n, dtype=torch.float64)
    s_count = 0
    curves = {a: {"step": [], "runs": [], "refit": [], "s_mean": [], "s_std": []} for a in cfg.arms}
    per_epoch = cfg.n_train // cfg.batch
    order, start, refreshes = None, time.time(), []
    te_pos, te_neg = diagonal_masks(cfg.n_test)
    for step in range(cfg.steps):
        if step % cfg.refresh == 0 and measured:
            copies = measured
            runs_of = [c // a_n for c in copies]
            log_z, ratios = full_log_z(critic, copies, x_tr[runs_of], y_tr[runs_of], cfg.z_columns, cfg.noise_batches, cfg.batch, gen)
            refreshes.append({"step": step, "log_z": {cfg.arms[c % a_n] + f"#{c // a_n}": round(float(v), 5) for c, v in zip(copies, log_z)},
                              "ratio_std": {cfg.arms[c % a_n] + f"#{c // a_n}": round(float(torch.exp(v).std()), 5) for c, v in zip(copies, ratios)}})
            for j, c in enumerate(copies):
                if c in oracle:
                    bounds[c].set_eta(log_z[j])
                noise_pool[c] = ratios[j]
        k = step % per_epoch
        if k == 0:
            order = torch.argsort(torch.rand(r, cfg.n_train, generator=gen), dim=1)
        idx = order[:, k * cfg.batch : (k + 1) * cfg.batch, None].expand(-1, -1, d)
        xb, yb = torch.gather(x_tr, 1, idx), torch.gather(y_tr, 1, idx)
        scores = critic.scores(xb.repeat_interleave(a_n, 0), yb.repeat_interleave(a_n, 0))  # [C, B, B]
        negs = {s: (all_neg if s == 0 else derangement_masks(cfg.batch, s, gen)) for s in set(p[2] for p in parsed)}
        draws = torch.randint(cfg.noise_batches, (r * a_n,), generator=gen)
        losses = []
        with masks_checked():  # the masks are built here: skip the per-call value checks
            for c, bound in enumerate(bounds):
                _, special, shifts = parsed[c % a_n]
                neg = negs[shifts]
                loss = bound(scores[c], pos, neg).loss
                if special == "noise":
                    # the noise is mean-one: the pool's log-ratios, centred in the linear domain
                    pool = noise_pool[c]
                    r_draw = torch.exp(pool[draws[c]] - torch.logsumexp(pool, 0) + torch.log(torch.tensor(float(len(pool)))))
                    loss = loss + (r_draw - 1.0) * masked_log_mean_exp(scores[c], neg)
                losses.append(loss)
                if is_eta[c]:
                    s = float(bound.normaliser) - 1.0
                    s_sum[c] += s
                    s_sq[c] += s * s
        s_count += 1
        critic_step(torch.stack(losses).sum(), opt, opt_eta, bounds, step)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            est, refit = _evaluate(critic, bounds, x_te, y_te, a_n, te_pos, te_neg)
            s_mean = s_sum / s_count
            s_std = (s_sq / s_count - s_mean**2).clamp_min(0).sqrt()
            for i, a in enumerate(cfg.arms):
                cs = slice(i, r * a_n, a_n)
                curves[a]["step"].append(step + 1)
                curves[a]["runs"].append([round(float(v), 5) for v in est[cs]])
                if is_eta[i]:
                    curves[a]["refit"].append([round(float(v), 5) for v in refit[cs]])
                    curves[a]["s_mean"].append([round(float(v), 5) for v in s_mean[cs]])
                    curves[a]["s_std"].append([round(float(v), 5) for v in s_std[cs]])
            s_sum.zero_(), s_sq.zero_()
            s_count = 0
            log(f"step {step + 1}/{cfg.steps} {time.time() - start:.0f}s " + " ".join(f"{a}={sum(curves[a]['runs'][-1]) / r:.3f}" for a in cfg.arms))
            result = {"true_mi": true_mi, "config": dataclasses.asdict(cfg), "curves": curves, "refreshes": refreshes,
                      "wall_s": round(time.time() - start, 1), "cpu_s": round(time.process_time(), 1)}
            if out is not None:
                (out / "curves.json").write_text(json.dumps(result))
    return result


@torch.no_grad()
def _evaluate(critic, bounds, x_te, y_te, a_n: int, pos, neg) -> tuple[torch.Tensor, torch.Tensor]:
    """Every copy's bound on its run's test set (all pairs) -> (estimate [C], refit [C], NaN without η)."""
    est, refit = [], []
    for b in bounds:
        b.eval()
    for c, b in enumerate(bounds):
        r = c // a_n
        sel = slice(c, c + 1)
        f = torch.bmm(critic.g(x_te[r : r + 1], sel), critic.h(y_te[r : r + 1], sel).transpose(1, 2))[0]
        with masks_checked():
            out = b(f, pos, neg)
        est.append(out.mi)
        refit.append(b.metrics()["mi/refit"].double() if isinstance(b, estimators.EtaMINE) else torch.tensor(float("nan"), dtype=torch.float64))
    for b in bounds:
        b.train()
    return torch.stack(est), torch.stack(refit)


def load_config(overrides: list[str], quick: bool = False) -> ArmsConfig:
    """Dataclass defaults <- ``QUICK`` <- ``key=value`` overrides; ValueError naming a bad setting or arm."""
    cfg = read_settings(ArmsConfig, overrides, QUICK if quick else None)
    for a in cfg.arms:
        parse_arm(a)
    require_counts(cfg, ("dim", "runs", "steps", "batch", "eval_every", "refresh", "noise_batches"))
    if cfg.batch > cfg.n_train:
        raise ValueError(f"batch {cfg.batch} exceeds the {cfg.n_train} training samples (n_train)")
    return cfg


def main(argv: list[str] | None = None) -> dict:
    cfg, out, command = run_command_line(
        "python -m experiments.mi_gaussian.arms", __doc__.split("\n\n")[0],
        out_help="output directory: curves.json (after every evaluation), run.json",
        quick_help="a tiny version (seconds) for smoke tests",
        overrides_help="settings of ArmsConfig, e.g. dim=10 runs=20 'arms=[eta-mine,dv-mine]'", load=load_config, argv=argv)
    (out / "run.json").write_text(json.dumps({"command": command, "torch": torch.__version__, "config": dataclasses.asdict(cfg)}, indent=1))
    result = run_arms(cfg, out, log=lambda m: print(m, flush=True))
    meta = json.loads((out / "run.json").read_text())
    meta.update(wall_s=result["wall_s"], cpu_s=result["cpu_s"])
    (out / "run.json").write_text(json.dumps(meta, indent=1))
    return result


if __name__ == "__main__":
    main()
