"""Many seeds of the MI-regularised GAN in one process, resumable (paper §5, Fig. 3b).

    python -m experiments.mi_gan.batched 'estimators=[eta-mine,dv-mine,none]' runs=10 steps=50000 out=DIR

Every (estimator, seed) pair is one copy of the networks of ``experiments.mi_gan`` (generator,
discriminator, statistics network: the same widths and depths), held as stacked weights [C, in, out]
and run with ``torch.bmm`` (``experiments.mi_gaussian.critics.BatchedMLP``), so the step's dispatch
cost is paid once for all copies. Adam is element-wise, so each copy trains exactly as an independent
network would. Seed s of every estimator starts from the same weights and sees the same real
samples, noise and codes (paired). The data stream differs from ``python -m experiments.mi_gan``'s
(one generator draws every seed's batch), so seed s here is not seed s there.

Every ``eval_every`` steps each copy is scored on fixed evaluation latents (modes covered,
high-quality fraction, the bound's estimate); every ``checkpoint_every`` steps the whole state
(weights, optimisers, η and EMA buffers, random-number state, history) goes to ``DIR/checkpoint.pt``
with an atomic rename, and ``DIR/results.json`` / ``results.md`` are rewritten. Started again with
the same settings (``steps`` may be larger), a run continues from its checkpoint.

Scores per estimator over seeds: the modes covered averaged over evaluations (time-averaged), the
high-quality fraction likewise, the first step from which all modes are held for ``hold_evals``
evaluations in a row, and the share of evaluations at all modes. ``results.md`` also compares every
MI estimator with DV-MINE seed by seed (:func:`paired`). A finished run started again with its
command rewrites ``results.json`` / ``results.md`` from its checkpoint and trains nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from experiments.mi_gan.gan import MIGANConfig, code_scores, grid_means, load_config, mode_stats
from experiments.mean_std import mean_std, pm
from experiments.mi_gaussian.benchmark import critic_step, pair_initialisation
from experiments.mi_gaussian.critics import BatchedMLP
from pretrain import estimators

RESUMABLE_CHANGES = {"steps", "out", "jobs", "threads"}  # settings a continued run may change


class Copies(nn.Module):
    """The networks of every copy: c = s·E + e is seed s of ``names[e]``; statistics networks
    (and bounds) only for the copies with an MI term, in the same order."""

    def __init__(self, cfg: MIGANConfig):
        super().__init__()
        self.names, self.seeds = list(cfg.estimators), cfg.runs
        e, s = len(self.names), self.seeds
        self.mi_copies = [c for c in range(e * s) if self.names[c % e] != "none"]
        self.G = BatchedMLP(e * s, cfg.noise_dim + cfg.n_codes, cfg.hidden, 2, layers=3)
        self.D = BatchedMLP(e * s, 2, cfg.hidden, 1, layers=3)
        self.T = BatchedMLP(len(self.mi_copies), 2, cfg.hidden, cfg.n_codes, layers=2) if self.mi_copies else None
        self.bounds = nn.ModuleList(_bound(self.names[c % e], cfg.n_critic) for c in self.mi_copies)
        pair_initialisation(self.G, s)
        pair_initialisation(self.D, s)
        if self.T is not None:
            pair_initialisation(self.T, s)

    @property
    def copies(self) -> int:
        return len(self.names) * self.seeds

    def seed_of(self) -> torch.Tensor:
        """[C] long: the seed index of each copy."""
        return torch.arange(self.copies) // len(self.names)


def _bound(name: str, n_critic: int) -> nn.Module:
    bound = estimators.build(name)
    return estimators.build(name, n_critic=n_critic) if isinstance(bound, estimators.EtaMINE) else bound


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """logits [C, B] -> the sum over copies of each copy's mean BCE (copies' gradients stay apart)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none").mean(1).sum()


def _mi_losses(net: Copies, x: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, B, 2], codes [M, B] of the MI copies -> (summed loss [], estimates [M] float64)."""
    table = net.T(x)  # [M, B, K]
    outs = [b(*code_scores(table[m], codes[m])) for m, b in enumerate(net.bounds)]
    return torch.stack([o.loss for o in outs]).sum(), torch.stack([o.mi for o in outs])


def _latents(cfg: MIGANConfig, seeds: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(seeds, n, cfg.noise_dim, generator=gen), torch.randint(cfg.n_codes, (seeds, n), generator=gen)


def _gen_input(cfg: MIGANConfig, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    return torch.cat([z, F.one_hot(codes, cfg.n_codes).to(z.dtype)], dim=-1)


@torch.no_grad()
def evaluate(net: Copies, cfg: MIGANConfig, eval_in: torch.Tensor, eval_codes: torch.Tensor, means: torch.Tensor) -> list[dict]:
    """Per copy: modes covered, high-quality fraction, the bound's estimate (None without MI) and η."""
    samples = net.G(eval_in)  # [C, S, 2]
    rows = []
    for c in range(net.copies):
        st = mode_stats(samples[c], means, cfg.sigma, cfg.min_per_mode)
        rows.append({"modes_covered": st.modes_covered, "high_quality": round(st.high_quality, 4), "mi": None})
    if net.mi_copies:
        net.bounds.eval()
        _, mis = _mi_losses(net, samples[net.mi_copies], eval_codes[net.mi_copies])
        net.bounds.train()
        for m, c in enumerate(net.mi_copies):
            rows[c]["mi"] = round(float(mis[m]), 4)
            if isinstance(net.bounds[m], estimators.EtaMINE):
                rows[c]["eta"] = round(float(net.bounds[m].eta), 4)
    return rows


def first_held(modes: list[int], steps: list[int], n_modes: int, hold: int) -> int | None:
    """The step of the first evaluation that starts ``hold`` evaluations in a row at all ``n_modes``."""
    run = 0
    for i, m in enumerate(modes):
        run = run + 1 if m >= n_modes else 0
        if run == hold:
            return steps[i - hold + 1]
    return None


def summarise(history: dict, names: list[str], seeds: int, n_modes: int, hold: int) -> dict:
    """history {"step": [T], "rows": [T][C] dicts} -> per estimator the four scores, per seed and
    mean ± std, evaluations after step 0 only."""
    steps = history["step"][1:]
    out = {}
    e = len(names)
    for i, name in enumerate(names):
        per = []
        for s in range(seeds):
            c = s * e + i
            modes = [row[c]["modes_covered"] for row in history["rows"][1:]]
            hq = [row[c]["high_quality"] for row in history["rows"][1:]]
            per.append({"time_avg_modes": float(np.mean(modes)) if modes else float("nan"),
                        "time_avg_high_quality": float(np.mean(hq)) if hq else float("nan"),
                        "first_held_all_modes": first_held(modes, steps, n_modes, hold),
                        "share_at_all_modes": float(np.mean([m >= n_modes for m in modes])) if modes else float("nan")})
        out[name] = {"seeds": per, **{k: list(mean_std([p[k] for p in per])) for k in ("time_avg_modes", "time_avg_high_quality", "share_at_all_modes")},
                     "reached": sum(p["first_held_all_modes"] is not None for p in per)}
    return out


PAIRED_SCORES = (("time_avg_modes", "time-averaged modes", ".2f"), ("time_avg_high_quality", "time-averaged high-quality", ".3f"))


def paired(summary: dict, reference: str = "dv-mine") -> list[dict]:
    """Every MI estimator against ``reference``, seed by seed (seed s of both starts from the same
    weights and sees the same data): per score of :data:`PAIRED_SCORES`, the differences' mean and
    std, the seeds ahead, the Wilcoxon signed-rank p (``scipy.stats.wilcoxon``) and that p
    Holm-corrected over every test of the table. Empty without the reference or with < 3 seeds."""
    from scipy import stats

    from experiments.mi_gaussian.analysis import holm

    if reference not in summary or len(summary[reference]["seeds"]) < 3:
        return []
    rows = []
    for name in (n for n in summary if n not in (reference, "none")):
        for key, label, _ in PAIRED_SCORES:
            diff = np.array([a[key] - b[key] for a, b in zip(summary[name]["seeds"], summary[reference]["seeds"])])
            p = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
            rows.append({"estimator": name, "reference": reference, "score": key, "label": label,
                         **dict(zip(("mean", "std"), mean_std(diff))), "ahead": int((diff > 0).sum()),
                         "seeds": len(diff), "p": p})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def markdown(summary: dict, step: int, cfg: MIGANConfig, hold: int) -> str:
    n_modes = cfg.grid_size**2
    lines = [f"{cfg.runs} paired seeds per estimator, {step:,} of {cfg.steps:,} generator steps, evaluation every {cfg.eval_every}, "
             f"{cfg.n_codes}-way code, {n_modes} modes (mean ± std over seeds):\n",
             f"| estimator | time-averaged modes | time-averaged high-quality | share of evaluations at {n_modes} modes | "
             f"first step holding {n_modes} for {hold} evaluations (seeds reaching it) |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        held = [p["first_held_all_modes"] for p in s["seeds"] if p["first_held_all_modes"] is not None]
        held_text = f"{np.mean(held):,.0f} ({len(held)}/{len(s['seeds'])})" if held else f"not reached (0/{len(s['seeds'])})"
        lines.append(f"| {name} | {pm(*s['time_avg_modes'], '.1f')} | {pm(*s['time_avg_high_quality'], '.3f')} | "
                     f"{pm(*s['share_at_all_modes'], '.2f')} | {held_text} |")
    rows = paired(summary)
    if rows:
        fmt = {key: f for key, _, f in PAIRED_SCORES}
        lines += [f"\nPaired, seed by seed against {rows[0]['reference']} (difference mean ± std, seeds ahead, Wilcoxon "
                  f"signed-rank p, Holm-corrected over the {len(rows)} tests):\n",
                  "| estimator | score | difference | seeds ahead | p | p (Holm) |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['estimator']} − {r['reference']} | {r['label']} | {pm(r['mean'], r['std'], fmt[r['score']], '+')} | "
                         f"{r['ahead']}/{r['seeds']} | {r['p']:.2g} | {r['p_holm']:.2g} |")
    return "\n".join(lines)


def _check_resumable(saved: dict, cfg: MIGANConfig, path: Path) -> None:
    now = dataclasses.asdict(cfg)
    for key in sorted(set(saved) | set(now)):
        if key not in RESUMABLE_CHANGES and saved.get(key) != now.get(key):
            raise ValueError(f"{path} was written with {key}={saved.get(key)!r}, not {now.get(key)!r}: use those settings or another out=")


def run(cfg: MIGANConfig, hold: int = 3, checkpoint_every: int = 1000, log=print) -> dict:
    """Train every copy to ``cfg.steps`` (continuing ``cfg.out/checkpoint.pt`` if present)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    net = Copies(cfg)
    betas = (0.5, 0.999)
    opt_g = torch.optim.Adam(net.G.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(net.D.parameters(), lr=cfg.lr_d, betas=betas)
    opt_t = torch.optim.Adam(net.T.parameters(), lr=cfg.lr_critic, betas=betas) if net.T is not None else None
    eta_params = list(net.bounds.parameters())
    opt_eta = torch.optim.Adam(eta_params, lr=cfg.lr_eta) if eta_params else None
    optimisers = {"g": opt_g, "d": opt_d, "t": opt_t, "eta": opt_eta}
    gen = torch.Generator().manual_seed(cfg.seed)
    means = grid_means(cfg.grid_size, cfg.spacing)
    eval_z, eval_c = _latents(cfg, cfg.runs, cfg.eval_samples, torch.Generator().manual_seed(10_000 + cfg.seed))
    seed_of = net.seed_of()
    eval_in, eval_codes = _gen_input(cfg, eval_z, eval_c)[seed_of], eval_c[seed_of]
    history, start, cpu_before = {"step": [], "rows": []}, 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        _check_resumable(state["config"], cfg, ckpt)
        net.load_state_dict(state["net"])
        for k, o in optimisers.items():
            if o is not None:
                o.load_state_dict(state["opt"][k])
        gen.set_state(state["gen"])
        history, start, cpu_before = state["history"], state["step"], state["cpu_s"]
        log(f"continuing {ckpt} from step {start}")
    cpu0, wall0 = time.process_time(), time.time()

    def write_results(step: int, cpu_s: float) -> None:
        summary = summarise(history, net.names, cfg.runs, cfg.grid_size**2, hold)
        result = {"config": dataclasses.asdict(cfg), "hold_evals": hold, "step": step, "cpu_s": round(cpu_s, 1),
                  "command": "python -m experiments.mi_gan.batched " + shlex.join(sys.argv[1:]), "summary": summary, "history": history}
        (out / "results.json").write_text(json.dumps(result))
        (out / "results.md").write_text(f"# MI-GAN, batched seeds\n\n`{result['command']}`\n\n{markdown(summary, step, cfg, hold)}\n\n"
                                        f"CPU time so far {cpu_s / 60:.0f} min.\n")

    def save(step: int) -> None:
        state = {"net": net.state_dict(), "opt": {k: o.state_dict() for k, o in optimisers.items() if o is not None},
                 "gen": gen.get_state(), "history": history, "step": step, "config": dataclasses.asdict(cfg),
                 "cpu_s": cpu_before + time.process_time() - cpu0}
        torch.save(state, out / "checkpoint.pt.tmp")
        os.replace(out / "checkpoint.pt.tmp", ckpt)
        write_results(step, state["cpu_s"])

    if start == cfg.steps:  # finished: its results again, from the checkpoint (the tables of this code)
        write_results(start, cpu_before)
        return json.loads((out / "results.json").read_text())

    for step in range(start, cfg.steps + 1):
        if step % cfg.eval_every == 0 and (not history["step"] or history["step"][-1] < step):
            history["step"].append(step)
            history["rows"].append(evaluate(net, cfg, eval_in, eval_codes, means))
            row = history["rows"][-1]
            log(f"step {step} ({time.time() - wall0:.0f}s): " + " ".join(
                f"{n}={np.mean([row[s * len(net.names) + i]['modes_covered'] for s in range(cfg.runs)]):.1f}" for i, n in enumerate(net.names)), flush=True)
        if step > start and (step % checkpoint_every == 0 or step == cfg.steps):
            save(step)
        if step == cfg.steps:
            break
        real = (means[torch.randint(len(means), (cfg.runs, cfg.batch), generator=gen)]
                + cfg.sigma * torch.randn(cfg.runs, cfg.batch, 2, generator=gen))[seed_of]
        z, codes = _latents(cfg, cfg.runs, cfg.batch, gen)
        codes = codes[seed_of]
        fake = net.G(_gen_input(cfg, z[seed_of], codes))  # [C, B, 2]

        opt_d.zero_grad(set_to_none=True)
        loss_d = _bce(net.D(real).squeeze(-1), 1.0) + _bce(net.D(fake.detach()).squeeze(-1), 0.0)
        loss_d.backward()
        opt_d.step()

        if net.mi_copies:
            loss_t, _ = _mi_losses(net, fake.detach()[net.mi_copies], codes[net.mi_copies])
            critic_step(loss_t, opt_t, opt_eta, net.bounds, step)

        opt_g.zero_grad(set_to_none=True)
        loss_g = _bce(net.D(fake).squeeze(-1), 1.0)
        if net.mi_copies:
            loss_mi, _ = _mi_losses(net, fake[net.mi_copies], codes[net.mi_copies])
            loss_g = loss_g + cfg.mi_weight * loss_mi
        loss_g.backward()
        opt_g.step()
    return json.loads((out / "results.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    import argparse

    p = argparse.ArgumentParser(prog="python -m experiments.mi_gan.batched", description=__doc__.split("\n\n")[0])
    p.add_argument("--hold", type=int, default=3, help="evaluations in a row at all modes that count as holding them")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="generator steps between checkpoints")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings of MIGANConfig (python -m experiments.mi_gan --help)")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.overrides)
    except ValueError as err:
        p.error(str(err))
    if a.hold < 1 or a.checkpoint_every < 1:
        p.error("--hold and --checkpoint-every must be >= 1")
    torch.set_num_threads(cfg.threads)
    try:
        result = run(cfg, a.hold, a.checkpoint_every, log=print)
    except ValueError as err:
        p.error(str(err))
    print(markdown(result["summary"], result["step"], cfg, a.hold))
    return result


if __name__ == "__main__":
    main()
