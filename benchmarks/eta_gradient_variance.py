"""Gradient noise of η-MINE against DV-MINE: the same critic, the same minibatches, side by side.

A paper-protocol Gaussian (``--dim``, ``--seed``; ``experiments.mi_gaussian``) and a critic
(``--critics``: separable, hidden 128, embedding 32; or concat, hidden 64) trained by DV-MINE for ``--train-steps`` (batch 64, Adam 5e-4). At that fixed critic, for each of
``--batches`` minibatches of ``--batch`` training samples (all B×B pairs), the critic's gradient of

  (a) DV-MINE: the marginal term divides by the batch's own mean_marg e^f (self-normalised);
  (b) η-MINE with η = η* = log mean_marg e^f over the training pairs (all 25M, or those of the first
      ``--star-samples`` samples): the best fixed η, where
      η-MINE's gradient is the unbiased one of the DV bound;
  (c) η-MINE with η = η* − ``--lag``: η behind its optimum, as measured during training.

For each: the mean gradient ḡ over the minibatches and the noise E‖g − ḡ‖². Prints the noise ratios
b/a and c/a, and how far the mean gradients of (b) and (c) are from (a)'s (relative norm).

    nice -n 10 python benchmarks/eta_gradient_variance.py --dim 10 --train-steps 1000 --batches 400
    nice -n 10 python benchmarks/eta_gradient_variance.py --dim 20 --seeds 0 1 2 3 4 --critics separable concat --star-samples 800 --json F

With several seeds or critics each (seed, critic) is one run and the JSON holds every run and the
range (min, median, max) of each ratio over them.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from experiments.mi_gaussian.benchmark import all_pair_scores, gaussian_mi, random_gaussian, sample_gaussian
from experiments.mi_gaussian.critics import build_critic
from pretrain import estimators


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (and critic)")
    p.add_argument("--critics", nargs="+", choices=("separable", "concat"), default=["separable"])
    p.add_argument("--hidden", type=int, default=128, help="separable critic: tower width (embedding 32)")
    p.add_argument("--hidden-concat", type=int, default=64, help="concat critic: width (it scores N·M rows, so it costs far more)")
    p.add_argument("--star-samples", type=int, default=0, help="η* over every pair of the first this many training samples (0: all; "
                   "the concat critic needs a few hundred: it scores every pair through its MLP)")
    p.add_argument("--train-steps", type=int, default=1000, help="DV-MINE steps before the critic is frozen")
    p.add_argument("--batches", type=int, default=400, help="minibatches the gradient statistics run over")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--lag", type=float, default=0.2, help="(c): η = η* − lag (nats)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs = [measure(a, seed, critic) for critic in a.critics for seed in a.seeds]
    if len(runs) == 1:
        out = runs[0]
    else:
        ratios = {k: sorted(r[k] for r in runs) for k in ("noise_ratio_b_over_a", "noise_ratio_c_over_a")}
        out = {"runs": runs, **{k: {"min": v[0], "median": v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2, "max": v[-1]}
                               for k, v in ratios.items()}}
        print(f"over {len(runs)} runs ({', '.join(a.critics)} × seeds {', '.join(map(str, a.seeds))}): ratio b/a "
              f"{out['noise_ratio_b_over_a']['min']:.2f}–{out['noise_ratio_b_over_a']['max']:.2f} (median {out['noise_ratio_b_over_a']['median']:.2f}), "
              f"c/a {out['noise_ratio_c_over_a']['min']:.2f}–{out['noise_ratio_c_over_a']['max']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return out


def measure(a: argparse.Namespace, seed: int, critic_kind: str) -> dict:
    """One run: train the critic, then the gradient statistics of (a), (b), (c) -> the figures."""
    cpu0 = time.process_time()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean, cov = random_gaussian(a.dim, gen)
    data = sample_gaussian(mean, cov, (1, a.n_train), gen)
    x, y = data[..., : a.dim], data[..., a.dim :]  # [1, n, d]
    critic = build_critic(critic_kind, 1, a.dim, hidden=a.hidden if critic_kind == "separable" else a.hidden_concat, embed=32)
    dv, eta_mine = estimators.build("dv-mine"), estimators.build("eta-mine")
    opt = torch.optim.Adam(critic.parameters(), lr=5e-4)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(a.n_train, generator=gen)[: a.batch]
        return x[:, idx], y[:, idx]

    for _ in range(a.train_steps):
        xb, yb = batch()
        loss = dv(critic.scores(xb, yb)[0]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        m = a.star_samples or a.n_train
        scores = all_pair_scores(critic, x[:, :m], y[:, :m])[0].double()  # [m, m]: every pair of the first m training samples
        off = ~torch.eye(m, dtype=torch.bool)
        eta_star = float(torch.logsumexp(scores[off], 0) - torch.log(off.sum().double()))
        train_dv = float(scores.diagonal().mean()) - eta_star
    params = list(critic.parameters())
    grads = {"a": [], "b": [], "c": []}
    for _ in range(a.batches):
        xb, yb = batch()
        s = critic.scores(xb, yb)[0]
        grads["a"].append(flat_grad(dv(s).loss, params))
        eta_mine.set_eta(eta_star)
        grads["b"].append(flat_grad(eta_mine(s).loss, params))
        eta_mine.set_eta(eta_star - a.lag)
        grads["c"].append(flat_grad(eta_mine(s).loss, params))
    stats = {}
    for k, g in grads.items():
        g = torch.stack(g).double()
        mean_g = g.mean(0)
        stats[k] = {"mean": mean_g, "noise": float(((g - mean_g) ** 2).sum(1).mean()), "mean_sq": float((mean_g**2).sum())}
    rel = {k: float((stats[k]["mean"] - stats["a"]["mean"]).norm() / stats["a"]["mean"].norm()) for k in ("b", "c")}
    out = {
        "dim": a.dim, "seed": seed, "critic": critic_kind, "true_mi": gaussian_mi(cov, a.dim), "train_dv_after_training": train_dv, "eta_star": eta_star,
        "batches": a.batches, "batch": a.batch, "train_steps": a.train_steps, "lag": a.lag,
        "noise": {k: v["noise"] for k, v in stats.items()}, "mean_grad_sq": {k: v["mean_sq"] for k, v in stats.items()},
        "noise_ratio_b_over_a": stats["b"]["noise"] / stats["a"]["noise"], "noise_ratio_c_over_a": stats["c"]["noise"] / stats["a"]["noise"],
        "mean_grad_rel_diff": rel, "cpu_s": round(time.process_time() - cpu0, 1),
    }
    print(f"{critic_kind} critic, seed {seed}, d = {a.dim} (true MI {out['true_mi']:.3f}), critic after {a.train_steps} DV-MINE steps: DV on the training set {train_dv:.3f}, η* = {eta_star:.3f}")
    print(f"gradient noise E|g − mean|² over {a.batches} minibatches of {a.batch}: (a) DV-MINE {stats['a']['noise']:.4g}, "
          f"(b) η-MINE at η* {stats['b']['noise']:.4g}, (c) η-MINE at η* − {a.lag:g} {stats['c']['noise']:.4g}")
    print(f"|mean gradient|²: (a) {stats['a']['mean_sq']:.4g}, (b) {stats['b']['mean_sq']:.4g}, (c) {stats['c']['mean_sq']:.4g}; "
          f"|mean − mean_a| / |mean_a|: (b) {rel['b']:.3f}, (c) {rel['c']:.3f}")
    print(f"ratio b/a = {out['noise_ratio_b_over_a']:.2f}, ratio c/a = {out['noise_ratio_c_over_a']:.2f} (CPU {out['cpu_s']} s)")
    return out


if __name__ == "__main__":
    main()
