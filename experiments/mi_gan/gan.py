"""MI-regularised GAN on a 25-Gaussian grid (paper §5, Fig. 3b; the MINE set-up of Belghazi et al.
2018, §5.1).

A conditional generator G(z, c) with a categorical code c (InfoGAN) is trained against an MLP
discriminator while maximising a lower bound on I(G(z, c); c) from ``pretrain.estimators``
(η-MINE or DV-MINE) with an MLP statistics network. ``none`` drops the MI term: the unconditional
baseline. Every ``eval_every`` generator steps we count the modes covered and the fraction of
high-quality samples and read the bound's MI estimate.

    python -m experiments.mi_gan estimators=[eta-mine,dv-mine,none] steps=20000 runs=3 out=DIR

writes ``DIR/results.json`` (config, per-run histories, per-estimator summary), ``DIR/samples.png``
(rows: runs, columns: chosen steps, like the paper's figure) and TensorBoard scalars in ``DIR/tb``.

Data: 25 isotropic Gaussians with means on the grid {-4, -2, 0, 2, 4}² (spacing 2) and σ = 0.05,
equal weights (the grid of VEEGAN / PacGAN, whose 3σ quality criterion we use). A sample is
high-quality when it lies within 3σ of its nearest mode; a mode is covered when at least
``min_per_mode`` of the ``eval_samples`` high-quality samples fall on it (20 of 2,500, i.e.
a fifth of a mode's fair share of 100, as in PacGAN).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

import storage
from experiments.mean_std import mean_std, pm
from experiments.mi_gan.models import Discriminator, Generator, StatisticsNetwork
from experiments.mi_gaussian.benchmark import critic_step
from experiments.settings import defaults_yaml, read_settings, require_counts
from pretrain import estimators

# Bounds that cannot run here: a-mine needs a second network η(y) passed as log_baseline.
UNSUPPORTED = {"a-mine": "a-mine needs a baseline network η(y) (log_baseline=), which this experiment does not build"}


@dataclass
class MIGANConfig:
    """Every default of the experiment; the command line overrides them."""

    # registered bound(s) for the MI term, or "none" for the unconditional baseline; several run one after another
    estimators: list[str] = field(default_factory=lambda: ["eta-mine"])
    mi_weight: float = 1.0  # weight λ of the MI term in the generator loss
    steps: int = 20_000  # generator steps per run (paper: η-MINE covers all modes by ~50K, DV-MINE by ~140K)
    seed: int = 0  # seed of the first run; run r uses seed + r, the same for every estimator
    runs: int = 1  # seeds per estimator
    out: str = "runs/mi_gan"
    eval_every: int = 500  # generator steps between evaluations (the resolution of "steps to 25 modes")
    eval_samples: int = 2500
    min_per_mode: int = 20  # high-quality samples a mode needs to count as covered
    snapshots: Optional[List[int]] = None  # steps shown in samples.png (None: 5%, 10%, 25%, 50%, 100% of steps)
    batch: int = 256
    noise_dim: int = 10
    n_codes: int = 25  # categories of the uniform code c
    hidden: int = 128
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    lr_critic: float = 1e-3  # Adam lr of the statistics network
    lr_eta: float = 1e-2  # Adam lr of η (paper: 1e-2)
    n_critic: int = 1  # η-MINE: critic steps per η step (Algorithm 1)
    grid_size: int = 5
    spacing: float = 2.0  # distance between neighbouring modes
    sigma: float = 0.05  # std of each mixture component; the quality radius is 3σ
    jobs: int = 1  # runs trained in parallel processes
    threads: int = 1  # torch threads per run

    def snapshot_steps(self) -> list[int]:
        """Steps whose samples go into the PNG grid: given, or 5%, 10%, 25%, 50%, 100% of ``steps``
        rounded to evaluation steps."""
        if self.snapshots:
            return sorted(set(self.snapshots))
        picks = {min(self.steps, round(f * self.steps / self.eval_every) * self.eval_every) for f in (0.05, 0.1, 0.25, 0.5, 1.0)}
        return sorted(picks)


# ---------------------------------------------------------------- data and metrics


def grid_means(grid_size: int = 5, spacing: float = 2.0) -> torch.Tensor:
    """Mode centres of the square grid, centred on the origin: [grid_size², 2]."""
    axis = (torch.arange(grid_size, dtype=torch.float32) - (grid_size - 1) / 2) * spacing
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def sample_mixture(means: torch.Tensor, sigma: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points from the equal-weight isotropic mixture with centres ``means`` [K, 2] -> [n, 2]."""
    idx = torch.randint(len(means), (n,), generator=gen)
    return means[idx] + sigma * torch.randn(n, means.shape[1], generator=gen)


class ModeStats(NamedTuple):
    modes_covered: int
    high_quality: float
    counts: torch.Tensor  # [K] high-quality samples per mode


def mode_stats(samples: torch.Tensor, means: torch.Tensor, sigma: float, min_per_mode: int) -> ModeStats:
    """Mode coverage of generated ``samples`` [S, 2] against mode centres ``means`` [K, 2].

    A sample is high-quality within 3σ of its nearest centre; a mode is covered when at least
    ``min_per_mode`` high-quality samples have it as nearest centre.
    """
    if samples.dim() != 2 or samples.shape[1] != means.shape[1] or len(samples) == 0:
        raise ValueError(f"samples must be [S>0, {means.shape[1]}], got {tuple(samples.shape)}")
    dist, nearest = torch.cdist(samples.float(), means.float()).min(dim=1)
    good = dist <= 3 * sigma
    counts = torch.bincount(nearest[good], minlength=len(means))
    return ModeStats(int((counts >= min_per_mode).sum()), float(good.float().mean()), counts)


def first_step_all_modes(history: list[dict], n_modes: int) -> int | None:
    """Generator step of the first evaluation that covers all ``n_modes`` modes, else None."""
    for row in history:
        if row["modes_covered"] >= n_modes:
            return int(row["step"])
    return None


# ---------------------------------------------------------------- the MI term


def code_scores(table: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out critic values for a registered bound.

    table [N, K]: T(x_i, k) for every code k; codes [N] long: the code x_i was generated from.
    Returns scores [N, 1 + K], pos_mask, neg_mask [N, 1 + K] bool. Column 0 holds the joint pair
    T(x_i, c_i); columns 1..K hold (x_i, k) for every k. As c is uniform, the mean over those K
    columns is exactly E_{p(c)} e^{T(x_i, c)}, the product-of-marginals term (excluding the
    joint code instead would make the bound unbounded once codes are perfectly separable).
    """
    if table.dim() != 2 or codes.shape != (table.shape[0],):
        raise ValueError(f"table must be [N, K] and codes [N], got {tuple(table.shape)} and {tuple(codes.shape)}")
    scores = torch.cat([table.gather(1, codes[:, None]), table], dim=1)
    pos = torch.zeros_like(scores, dtype=torch.bool)
    pos[:, 0] = True
    return scores, pos, ~pos


class MITerm(nn.Module):
    """Lower bound on I(x; c) from a registered estimator and an MLP statistics network.

    ``critic`` (the statistics network) and ``bound`` (``pretrain.estimators.build(name)``, which
    owns η for η-MINE) are trained to minimise the returned loss; the generator minimises
    ``mi_weight · loss``, i.e. maximises the bound.
    """

    def __init__(self, estimator: str, n_codes: int, hidden: int = 128, **bound_kwargs):
        super().__init__()
        if estimator in UNSUPPORTED:
            raise ValueError(UNSUPPORTED[estimator])
        self.critic = StatisticsNetwork(n_codes, hidden=hidden)
        self.bound = estimators.build(estimator, **bound_kwargs)

    def forward(self, x: torch.Tensor, codes: torch.Tensor) -> estimators.MIEstimate:
        """x [N, 2], codes [N] long -> MIEstimate(loss [], mi [] nats)."""
        return self.bound(*code_scores(self.critic(x), codes))


# ---------------------------------------------------------------- one training run


def _latent(cfg: MIGANConfig, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, cfg.noise_dim, generator=gen), torch.randint(cfg.n_codes, (n,), generator=gen)


def train_one(cfg: MIGANConfig, estimator: str, seed: int, tb_dir: str | None = None, log=print) -> dict:
    """Train one GAN for ``cfg.steps`` generator steps; evaluate every ``cfg.eval_every``.

    Each generator step: one discriminator step, one statistics-network step (η steps as the
    bound's schedule says, ``pretrain.estimators.eta_step``), one generator step. Returns a dict with ``history`` (one row
    per evaluation: step, modes_covered, high_quality, mi, losses), ``steps_to_all_modes``,
    ``snapshots`` {step: samples [≤1000, 2] ndarray}, and the run's CPU and wall seconds.
    """
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, estimator, seed, tb_dir, log)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: MIGANConfig, estimator: str, seed: int, tb_dir: str | None, log) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    torch.manual_seed(seed)
    means = grid_means(cfg.grid_size, cfg.spacing)
    G = Generator(cfg.noise_dim, cfg.n_codes, cfg.hidden)
    D = Discriminator(hidden=cfg.hidden)
    mi = None
    if estimator != "none":
        kwargs = {"n_critic": cfg.n_critic} if estimators.capabilities(estimator).has_eta else {}
        mi = MITerm(estimator, cfg.n_codes, cfg.hidden, **kwargs)
    betas = (0.5, 0.999)  # the usual GAN setting: less momentum keeps the two players from overshooting
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=betas)
    opt_t = opt_eta = None
    if mi is not None:
        opt_t = torch.optim.Adam(mi.critic.parameters(), lr=cfg.lr_critic, betas=betas)
        bound_params = list(mi.bound.parameters())
        if bound_params:  # η of η-MINE: Adam lr 1e-2 as in the paper's Appendix D
            opt_eta = torch.optim.Adam(bound_params, lr=cfg.lr_eta)

    gen = torch.Generator().manual_seed(seed)  # training batches: identical across estimators
    eval_gen = torch.Generator().manual_seed(10_000 + seed)
    eval_z, eval_c = _latent(cfg, cfg.eval_samples, eval_gen)  # one fixed set, so curves are smooth
    snap_at = set(cfg.snapshot_steps())
    writer = None
    if tb_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tb_dir)
    name = f"{estimator} seed {seed}"
    history, snapshots = [], {}
    losses = {"loss_d": float("nan"), "loss_g": float("nan"), "loss_mi": float("nan")}

    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row = {"step": step, **evaluate(G, mi, means, cfg, eval_z, eval_c), **losses}
            if mi is not None and hasattr(mi.bound, "eta"):
                row["eta"] = float(mi.bound.eta.detach())
            history.append(row)
            if step in snap_at:
                with torch.no_grad():
                    snapshots[step] = G(eval_z[:1000], eval_c[:1000]).numpy()
            if writer is not None:
                for key, value in row.items():
                    if key != "step" and value is not None and math.isfinite(value):
                        writer.add_scalar(key, value, step)
            mi_text = "" if row["mi"] is None else f" mi {row['mi']:.3f}"
            log(f"[{name}] step {step}: modes {row['modes_covered']}/{len(means)} hq {row['high_quality']:.3f}{mi_text}", flush=True)
        if step == cfg.steps:
            break

        real = sample_mixture(means, cfg.sigma, cfg.batch, gen)
        z, c = _latent(cfg, cfg.batch, gen)
        fake = G(z, c)

        opt_d.zero_grad(set_to_none=True)
        ones, zeros = torch.ones(cfg.batch), torch.zeros(cfg.batch)
        loss_d = F.binary_cross_entropy_with_logits(D(real), ones) + F.binary_cross_entropy_with_logits(D(fake.detach()), zeros)
        loss_d.backward()
        opt_d.step()

        if mi is not None:
            critic_step(mi(fake.detach(), c).loss, opt_t, opt_eta, mi, step)

        opt_g.zero_grad(set_to_none=True)
        loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)  # non-saturating generator loss
        loss_mi = mi(fake, c).loss if mi is not None else torch.zeros(())
        (loss_g + cfg.mi_weight * loss_mi).backward()
        opt_g.step()
        losses = {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "loss_mi": loss_mi.item() if mi is not None else float("nan")}

    if writer is not None:
        writer.close()
    return {
        "estimator": estimator,
        "seed": seed,
        "history": history,
        "steps_to_all_modes": first_step_all_modes(history, len(means)),
        "snapshots": snapshots,
        "cpu_seconds": time.process_time() - cpu0,
        "wall_seconds": time.perf_counter() - wall0,
    }


@torch.no_grad()
def evaluate(G: Generator, mi: MITerm | None, means: torch.Tensor, cfg: MIGANConfig, z: torch.Tensor, codes: torch.Tensor) -> dict:
    """Mode coverage, high-quality fraction and MI estimate (nats, None without an MI term) of
    G on the fixed latents z [S, noise_dim], codes [S]."""
    samples = G(z, codes)
    stats = mode_stats(samples, means, cfg.sigma, cfg.min_per_mode)
    out = {"modes_covered": stats.modes_covered, "high_quality": stats.high_quality, "mi": None}
    if mi is not None:
        was_training = mi.training
        mi.eval()  # e.g. dv-mine-ema must not move its average on evaluation batches
        out["mi"] = float(mi(samples, codes).mi)
        mi.train(was_training)
        if isinstance(mi.bound, estimators.EtaMINE):  # the same critic with η in closed form on these samples
            out["mi_refit"] = float(mi.bound.metrics()["mi/refit"])
    return out


# ---------------------------------------------------------------- several runs, summary, figure


def _fmt(values: list[float], digits: int = 0) -> str:
    return pm(*mean_std(values), f",.{digits}f")


def summarise(runs: list[dict], n_modes: int, steps: int) -> dict:
    """Per estimator: steps to all modes (mean ± sample std over the runs that reached it, or
    "not reached"), and the final modes covered, high-quality fraction and MI estimate."""
    out = {}
    for est in dict.fromkeys(r["estimator"] for r in runs):
        mine = [r for r in runs if r["estimator"] == est]
        reached = [r["steps_to_all_modes"] for r in mine if r["steps_to_all_modes"] is not None]
        if reached:
            text = f"{_fmt(reached)} ({len(reached)}/{len(mine)} runs)"
        else:
            text = f"not reached (0/{len(mine)} runs within {steps:,} steps)"
        finals = [r["history"][-1] for r in mine]
        mis = [f["mi"] for f in finals if f["mi"] is not None]
        out[est] = {
            "runs": len(mine),
            "steps_to_all_modes": [r["steps_to_all_modes"] for r in mine],
            "steps_to_all_modes_text": text,
            "final_modes_covered": [f["modes_covered"] for f in finals],
            "final_modes_covered_text": f"{_fmt([f['modes_covered'] for f in finals], 1)} / {n_modes}",
            "final_high_quality": [f["high_quality"] for f in finals],
            "final_high_quality_text": _fmt([f["high_quality"] for f in finals], 3),
            "final_mi": mis,
            "final_mi_text": _fmt(mis, 3) if mis else "n/a",
            "cpu_seconds": sum(r["cpu_seconds"] for r in mine),
        }
    return out


def plot_grid(runs: list[dict], means: torch.Tensor, path: Path) -> None:
    """PNG: one row per run, one column per snapshot step, samples in blue over the mode centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({s for r in runs for s in r["snapshots"]})
    fig, axes = plt.subplots(len(runs), len(steps), figsize=(2.2 * len(steps), 2.2 * len(runs)), squeeze=False)
    lim = float(means.abs().max()) + 2
    for i, run in enumerate(runs):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            ax.scatter(means[:, 0], means[:, 1], s=12, c="tab:red", marker="x", linewidths=0.8)
            if step in run["snapshots"]:
                pts = run["snapshots"][step]
                ax.scatter(pts[:, 0], pts[:, 1], s=1, c="tab:blue", alpha=0.5)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"step {step:,}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{run['estimator']}\nseed {run['seed']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _run_task(args: tuple) -> dict:
    cfg, est, seed, tb_dir = args
    return train_one(cfg, est, seed, tb_dir)


def run_experiment(cfg: MIGANConfig) -> dict:
    """Train ``cfg.runs`` seeds per estimator (``cfg.jobs`` processes), write results.json,
    samples.png and TensorBoard scalars under ``cfg.out``; return the results dict."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(cfg, est, cfg.seed + r, str(out / "tb" / f"{est}-seed{cfg.seed + r}")) for est in cfg.estimators for r in range(cfg.runs)]
    wall0 = time.perf_counter()
    if cfg.jobs > 1:
        with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(_run_task, tasks))
    else:
        runs = [_run_task(t) for t in tasks]
    wall = time.perf_counter() - wall0
    means = grid_means(cfg.grid_size, cfg.spacing)
    plot_grid(runs, means, out / "samples.png")
    results = {
        "config": dataclasses.asdict(cfg),
        "command": "python -m experiments.mi_gan " + shlex.join(sys.argv[1:]),
        "summary": summarise(runs, len(means), cfg.steps),
        "runs": [{k: v for k, v in r.items() if k != "snapshots"} for r in runs],
        "wall_seconds": wall,
        "cpu_seconds": sum(r["cpu_seconds"] for r in runs),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def load_config(overrides: list[str] = ()) -> MIGANConfig:
    """MIGANConfig defaults <- ``key=value`` overrides (OmegaConf), checked; ValueError naming the
    setting on an unknown key, a wrong type or a bad value."""
    cfg = read_settings(MIGANConfig, list(overrides))
    known = estimators.names()
    for est in cfg.estimators:
        if est in UNSUPPORTED:
            raise ValueError(UNSUPPORTED[est])
        if est != "none" and est not in known:
            raise ValueError(f"unknown estimator {est!r}; use 'none' or one of: {', '.join(n for n in known if n not in UNSUPPORTED)}")
    require_counts(cfg, ("steps", "runs", "eval_every", "eval_samples", "batch", "jobs", "threads", "n_codes", "n_critic"))
    try:
        storage.local_only(cfg.out, "out")
    except storage.StorageError as exc:
        raise ValueError(str(exc)) from None
    return cfg


def parse_args(argv: list[str] | None = None) -> MIGANConfig:
    """Command line -> MIGANConfig: ``key=value`` overrides of the dataclass defaults."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.mi_gan", description=__doc__.split("\n\n")[0],
        epilog="defaults (override with key=value):\n" + defaults_yaml(MIGANConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="settings of MIGANConfig, e.g. estimators=[eta-mine,dv-mine,none] steps=6000 runs=3 jobs=9")
    a = p.parse_args(argv)
    try:
        return load_config(a.overrides)
    except ValueError as err:
        p.error(str(err))


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    results = run_experiment(cfg)
    print(f"\nsteps to all {cfg.grid_size ** 2} modes (eval every {cfg.eval_every}), final modes / high-quality / MI:")
    for est, s in results["summary"].items():
        print(f"  {est:10s} {s['steps_to_all_modes_text']:38s} {s['final_modes_covered_text']:14s} {s['final_high_quality_text']:16s} {s['final_mi_text']}")
    print(f"wall {results['wall_seconds']:.0f} s, cpu {results['cpu_seconds']:.0f} s; wrote {Path(cfg.out) / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
