"""Paired comparisons of a run's curves against DV-MINE: at every evaluation, at each run's peak and
as the area under the curve, with Holm-corrected p-values; η's lag as signed and absolute means.

    python -m experiments.mi_gaussian.analysis experiments/mi_gaussian/results/eta-paper-6k
    python -m experiments.mi_gaussian.analysis experiments/mi_gaussian/results/arms-d20      # arms runs too
    python -m experiments.mi_gaussian.analysis experiments/mi_gaussian/results/arms-d20 --reference eta-mine/oracle

Reads ``curves.json`` of the paper protocol ({dim: {bound: {"step", "runs", "eta_minus_eta_star"}}})
or of ``experiments.mi_gaussian.arms`` ({"curves": {arm: {"step", "runs", "s_mean", "s_std"}}}) and
writes ``analysis.md`` beside it. Run r of every bound shares data and initial critic, so each
comparison is a paired t-test over runs (``scipy.stats.ttest_rel``). Two families, each
Holm-corrected over all its tests: the per-evaluation table, and the summary table (final
evaluation, each run's peak, area under the curve = the mean of the test estimate over the
evaluations, i.e. the trapezoid-free average over equally spaced evaluations).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.mean_std import mean_std, pm


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order."""
    m = len(pvalues)
    order = np.argsort(pvalues)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def load_curves(run_dir: Path) -> dict[str, dict]:
    """curves.json of either runner -> {label: {"step": [T], "runs": array [T, R], extras}}, label "d=<dim> <bound>"."""
    data = json.loads((run_dir / "curves.json").read_text())
    if "curves" in data:  # experiments.mi_gaussian.arms
        dim = data["config"]["dim"]
        return {f"d={dim} {a}": {**c, "runs": np.array(c["runs"])} for a, c in data["curves"].items()}
    return {f"d={d} {n}": {**c, "runs": np.array(c["runs"])} for d, per in data.items() for n, c in per.items()}


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int, float]:
    from scipy import stats

    diff = a - b
    if np.ptp(diff) < 1e-9 * max(1.0, float(np.abs(diff).max())):  # every run the same gap: no spread to test
        p = 0.0 if abs(diff[0]) > 1e-12 else 1.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return *mean_std(diff), int((diff > 0).sum()), p


def analyse(curves: dict[str, dict], reference: str = "dv-mine") -> str:
    """Markdown: per-evaluation paired gaps, the summary (final, peak, AUC) and η's lag."""
    dims = sorted({k.split(" ")[0] for k in curves}, key=lambda s: int(s[2:]))
    out = []
    for d in dims:
        ref_key = f"{d} {reference}"
        if ref_key not in curves:
            continue
        ref = curves[ref_key]["runs"]
        names = [k for k in curves if k.startswith(d + " ") and k != ref_key]
        steps = curves[ref_key]["step"]
        r = ref.shape[1]
        # per evaluation
        cells, pvals = {}, []
        for k in names:
            for t in range(len(steps)):
                m, s, w, p = _paired(curves[k]["runs"][t], ref[t])
                cells[(k, t)] = (m, w, len(pvals))
                pvals.append(p)
        adj = holm(pvals)
        short = [k.split(" ", 1)[1] for k in names]
        out.append(f"### {d}: bound − {reference}, paired over {r} runs, at every evaluation\n")
        out.append(f"Cell: mean difference (nats), runs where the bound is ahead, Holm-adjusted p over the {len(pvals)} tests of this table.\n")
        out.append("| step | " + " | ".join(short) + " |")
        out.append("|---" * (len(names) + 1) + "|")
        for t, step in enumerate(steps):
            row = [f"{cells[(k, t)][0]:+.2f}, {cells[(k, t)][1]}/{r}, {adj[cells[(k, t)][2]]:.2g}" for k in names]
            out.append(f"| {step} | " + " | ".join(row) + " |")
        # summary: final, peak, AUC
        summary, pvals = [], []
        for k in names:
            runs = curves[k]["runs"]
            for what, a, b in (("final", runs[-1], ref[-1]), ("peak", runs.max(0), ref.max(0)), ("AUC", runs.mean(0), ref.mean(0))):
                m, s, w, p = _paired(a, b)
                summary.append((k.split(" ", 1)[1], what, m, s, w, p, float(a.mean())))
                pvals.append(p)
        adj = holm(pvals)
        out.append(f"\n### {d}: final evaluation, each run's peak, area under the curve\n")
        out.append(f"AUC = the mean test estimate over the {len(steps)} evaluations; peak = each run's best evaluation. "
                   f"Holm over the {len(pvals)} tests of this table. {reference}: final {ref[-1].mean():.3f}, peak {ref.max(0).mean():.3f}, AUC {ref.mean(0).mean():.3f}.\n")
        out.append("| bound | measure | bound's mean | − " + reference + " (mean ± std) | ahead | p | p (Holm) |")
        out.append("|---|---|---|---|---|---|---|")
        for (name, what, m, s, w, p, mean), pa in zip(summary, adj):
            out.append(f"| {name} | {what} | {mean:.3f} | {pm(m, s, sign='+')} | {w}/{r} | {p:.2g} | {pa:.2g} |")
        # η's lag
        lag_rows = []
        for k in names + [ref_key]:
            c = curves[k]
            if c.get("eta_minus_eta_star"):
                g = np.array(c["eta_minus_eta_star"])  # [T, R], on the test pairs
                lag_rows.append((k.split(" ", 1)[1], "η − η* (test pairs, per evaluation)", g.mean(), np.abs(g).mean(), g.min(), g.max()))
            if c.get("s_mean"):
                sm, ss = np.array(c["s_mean"]), np.array(c["s_std"])  # [T, R]
                lag_rows.append((k.split(" ", 1)[1], "s = e^{−η}Ẑ_b − 1 per step: mean (lag) | std (noise)", sm.mean(), np.abs(sm).mean(), ss.mean(), ss.max()))
        if lag_rows:
            out.append(f"\n### {d}: η's lag and the gradient scalar\n")
            out.append("| bound | quantity | signed mean | mean of absolute | min (or mean std) | max (or max std) |")
            out.append("|---|---|---|---|---|---|")
            for name, what, a, b, c_, d_ in lag_rows:
                out.append(f"| {name} | {what} | {a:+.3f} | {b:.3f} | {c_:+.3f} | {d_:+.3f} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    import argparse

    p = argparse.ArgumentParser(prog="python -m experiments.mi_gaussian.analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a directory holding curves.json")
    p.add_argument("--reference", default="dv-mine", help="the bound every other is compared with (another than dv-mine "
                   "writes analysis-<reference>.md, e.g. eta-mine/oracle: η-MINE's lag alone)")
    a = p.parse_args(argv)
    if not (a.run_dir / "curves.json").is_file():
        p.error(f"{a.run_dir} holds no curves.json")
    curves = load_curves(a.run_dir)
    if not any(k.split(" ", 1)[1] == a.reference for k in curves):
        p.error(f"{a.run_dir}/curves.json has no bound {a.reference!r}; it has {', '.join(sorted({k.split(' ', 1)[1] for k in curves}))}")
    command = f"python -m experiments.mi_gaussian.analysis {a.run_dir.as_posix()}" + ("" if a.reference == "dv-mine" else f" --reference {a.reference}")
    text = f"# Paired analysis of `{a.run_dir.as_posix()}`\n\n`{command}`\n\n" + analyse(curves, a.reference)
    name = "analysis.md" if a.reference == "dv-mine" else f"analysis-{a.reference.replace('/', '-')}.md"
    (a.run_dir / name).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
