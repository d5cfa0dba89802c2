"""Figures of the Gaussian MI benchmark, drawn from the JSON files a run writes.

    python -m experiments.mi_gaussian.plots experiments/mi_gaussian/results/paper
    python -m experiments.mi_gaussian.plots experiments/mi_gaussian/results/staircase

redraws the PNGs of a run directory from its ``results.json``, ``run.json`` and ``curves.json``
(paper) or ``traces.json`` (staircase), so the committed figures can be remade without rerunning.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_dimension(plt, dims: list, path: Path, draw, ylabel: str, xlabel: str | None = None,
                   legend_on_each: bool = False) -> Path:
    """One panel a dimension, side by side: ``draw(ax, d)`` fills each; titles, labels, legend, save."""
    fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        draw(ax, d)
        ax.set_title(f"d = {d}")
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if legend_on_each:
            ax.legend()
    if not legend_on_each:
        axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_paper(rows: list[dict], curves: dict, out: Path) -> list[Path]:
    """Estimate vs truth per dimension (mean ± std), the test-estimate curves and, for η-MINE
    bounds, η − η* on the test pairs over training. ``curves``: {dim (str): {name: curve}}."""
    plt = _pyplot()
    dims = sorted({r["dim"] for r in rows})
    names = list(dict.fromkeys(r["estimator"] for r in rows))

    def estimates(ax, d):
        sub = {r["estimator"]: r for r in rows if r["dim"] == d}
        xs = np.arange(len(names))
        ax.errorbar(xs, [sub[n]["mean"] for n in names], yerr=[sub[n]["std"] for n in names], fmt="o", capsize=4)
        ax.axhline(sub[names[0]]["true_mi"], color="red", label="true MI")
        ax.set_xticks(xs, names, rotation=60, ha="right")

    def convergence(ax, d):
        for n, c in curves[str(d)].items():
            m, s = np.array(c["mean"]), np.array(c["std"])
            ax.plot(c["step"], m, label=n, ls="--" if n.endswith("/refit") else "-")
            ax.fill_between(c["step"], m - s, m + s, alpha=0.12)
        ax.axhline(next(r["true_mi"] for r in rows if r["dim"] == d), color="red", ls=":")

    gaps = {d: {n: c for n, c in curves[str(d)].items() if "eta_minus_eta_star" in c} for d in dims}

    def eta_gap(ax, d):
        for n, c in gaps[d].items():
            g = np.array(c["eta_minus_eta_star"])  # [evaluations, runs]
            ax.plot(c["step"], g.mean(axis=1), label=n)
            ax.fill_between(c["step"], g.min(axis=1), g.max(axis=1), alpha=0.12)
        ax.axhline(0.0, color="black", lw=0.5)

    paths = [_per_dimension(plt, dims, out / "paper_estimates.png", estimates, "test estimate (nats)",
                            legend_on_each=True),
             _per_dimension(plt, dims, out / "paper_convergence.png", convergence,
                            "test estimate (nats), mean ± std over runs", xlabel="step")]
    if any(gaps.values()):
        paths.append(_per_dimension(plt, dims, out / "paper_eta_gap.png", eta_gap,
                                    "η − log mean_marg e^f on the test pairs (mean, min–max)", xlabel="step"))
    return paths


def plot_staircase(traces: dict, out: Path) -> Path:
    """Poole et al.'s figure from ``traces.json``: per critic (rows) and series (columns) the
    per-batch estimates averaged over blocks of ``every`` steps, and the true MI."""
    plt = _pyplot()
    kinds, series, every = list(traces["critics"]), traces["series"], traces["every"]
    truth = np.repeat(traces["levels"], traces["steps"] // every)
    fig, axes = plt.subplots(len(kinds), len(series), figsize=(2.6 * len(series), 2.6 * len(kinds)), sharey=True, squeeze=False)
    for row, k in enumerate(kinds):
        for col, n in enumerate(series):
            ax = axes[row][col]
            t = np.array(traces["critics"][k][n])
            steps = (np.arange(len(t)) + 0.5) * every
            ax.plot(steps, t, color="C0", lw=0.6)
            ax.plot(np.arange(len(truth)) * every, truth, color="black", lw=1)
            ax.set_ylim(-1, max(traces["levels"]) * 1.3)
            ax.set_title(f"{n}\n{k}", fontsize=8)
    fig.tight_layout()
    path = out / "staircase.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def redraw(run_dir: Path) -> list[Path]:
    """Redraw every figure of one run directory from its JSON files."""
    protocol = json.loads((run_dir / "run.json").read_text())["protocol"]
    rows = json.loads((run_dir / "results.json").read_text())
    if protocol == "paper":
        return plot_paper(rows, json.loads((run_dir / "curves.json").read_text()), run_dir)
    return [plot_staircase(json.loads((run_dir / "traces.json").read_text()), run_dir)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.mi_gaussian.plots", description="Redraw a benchmark run's figures from its JSON files.")
    p.add_argument("run_dir", type=Path, help="a directory written by python -m experiments.mi_gaussian")
    args = p.parse_args(argv)
    if not (args.run_dir / "run.json").is_file():
        p.error(f"{args.run_dir}: no run.json there; give a directory written by python -m experiments.mi_gaussian")
    for path in redraw(args.run_dir):
        print(path)


if __name__ == "__main__":
    main()
