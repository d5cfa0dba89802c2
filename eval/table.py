"""Gather many `results.json` into one Markdown table (and a PNG beside it), with the paper's numbers where the setting matches.

    python -m eval.table runs/eval --out runs/eval/table.md   # any directories holding results.json below them

A `results.json` that `python -m eval.linear` did not write (the experiments' own results, say) is
skipped with a note on stderr; only finding no probe result at all is an error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import storage
from eval.paper_results import paper_reference, schedule_difference

REQUIRED = ("checkpoint_name", "dataset", "pretraining", "epochs", "seeds", "top1", "top5", "top10", "knn")


def find_results(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Every results.json in or below the given directories (or the files themselves), sorted, no repeats."""
    found: list[Path] = []
    for d in dirs:
        p = Path(d)
        if p.is_file() and p.name == "results.json":
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("results.json")))
        else:
            raise FileNotFoundError(f"{p} is neither a results directory nor a results.json (run python -m eval.linear first)")
    unique = sorted({f.resolve() for f in found})
    if not unique:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, dirs))} (run python -m eval.linear out=DIR first)")
    return unique


def load_result(path: Path) -> dict:
    """One results.json; a one-line ValueError if it is not one of ours."""
    try:
        res = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run python -m eval.linear") from None
    if not isinstance(res, dict):
        raise ValueError(f"{path} is not an eval.linear results file: a JSON {type(res).__name__}, not an object")
    missing = [k for k in REQUIRED if k not in res]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{path} is not an eval.linear results file: no {', '.join(missing[:3])}{more}")
    return res


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _method(res: dict) -> str:
    pre = res["pretraining"]
    if res.get("random_init"):
        return "random init"
    if pre.get("task") == "jigsaw-ce":
        return "CE"
    if pre.get("task") == "supervised":
        return "supervised"
    return pre.get("estimator") or "-"


def _protocol(res: dict) -> str:
    """The probe protocol of a row: `paper` (one head, fixed lr) or `sweep (K heads)`."""
    if res.get("protocol") == "sweep":
        return f"sweep ({len(res['sweep']['grid'])} heads)"
    return "paper"


def _topk(res: dict, k: int) -> str:
    """Ours at top-k; "—" where k reaches the number of classes (then it is 100 by definition)."""
    if k > 1 and res.get("num_classes", k + 1) <= k:
        return "—"
    return _pm(res[f"top{k}"]["mean"], res[f"top{k}"]["std"])


def _sort_key(r: dict):
    return (r["dataset"], r["pretraining"].get("task") or "", _method(r), r["checkpoint_name"])


def paper_beside(res: dict) -> tuple[dict | None, str | None]:
    """(the paper's numbers to show beside a row, or None; why they are not beside it, or None).

    A paper number stands beside a row only when the setting matches (:func:`paper_reference`) and so
    does the pretraining schedule (:func:`schedule_difference`); a setting that matches with another
    schedule gets the number in a footnote saying what differs.
    """
    paper = paper_reference(res)
    if paper is None:
        return None, None
    differs = schedule_difference(res, paper["table"])
    return (paper, None) if differs is None else (None, differs)


def seed_groups(results: Sequence[dict]) -> list[list[dict]]:
    """Runs of one pretraining config that differ only in the pretraining seed (run.seed), probed the
    same way: the groups of two or more distinct seeds, each sorted by seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        pre = r["pretraining"]
        if pre.get("seed") is None:
            continue
        key = (pre.get("task"), pre.get("estimator"), pre.get("encoder"), pre.get("depth"), pre.get("dataset"),
               pre.get("num_samples"), pre.get("global_batch"), r.get("step"), bool(r.get("random_init")), r["dataset"],
               _protocol(r), r["epochs"])
        groups.setdefault(key, []).append(r)
    return [sorted(g, key=lambda r: r["pretraining"]["seed"]) for g in groups.values()
            if len({r["pretraining"]["seed"] for r in g}) > 1]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1))


def make_table(results: Sequence[dict]) -> str:
    """Markdown: a row per result (ours as mean ± std over probe seeds, the paper's beside it where setting
    and schedule match), then, where several pretraining seeds of one config exist, their spread."""
    rows = sorted(results, key=_sort_key)
    head = ("| checkpoint | task | method | encoder | pretrained on | pretraining batch | pretraining seed | probed on "
            "| probe | epochs | probe seeds | top-1 | top-5 | top-10 | kNN top-1 | kNN top-5 | paper top-1 | paper top-5 | paper top-10 |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    tables, footnotes = set(), []
    for r in rows:
        pre = r["pretraining"]
        paper, differs = paper_beside(r)
        if paper:
            tables.add(paper["table"])
            ref = [(_pm(*paper[k]) + f" ({paper['table']})" if k == "top1" else _pm(*paper[k])) if k in paper else "–"
                   for k in ("top1", "top5", "top10")]
        elif differs:
            other = paper_reference(r)
            footnotes.append(f"[{len(footnotes) + 1}] {r['checkpoint_name']}: {other['table']} reports top-1 "
                             f"{_pm(*other['top1'])} for this setting, not shown beside it: {differs}.")
            ref = [f"see [{len(footnotes)}]", "–", "–"]
        else:
            ref = ["–", "–", "–"]
        encoder = pre.get("encoder") or "-"
        if pre.get("depth"):
            encoder += f" (depth {pre['depth']})"
        size = f" ({pre['num_samples']:,})" if pre.get("num_samples") else ""
        lines.append(
            f"| {r['checkpoint_name']} | {pre.get('task') or '-'} | {_method(r)} | {encoder} | {pre.get('dataset') or '-'}{size} "
            f"| {pre.get('global_batch') or '-'} | {'-' if pre.get('seed') is None else pre['seed']} "
            f"| {r['dataset']} | {_protocol(r)} | {r['epochs']} | {len(r['seeds'])} "
            f"| {_topk(r, 1)} | {_topk(r, 5)} | {_topk(r, 10)} | {r['knn']['top1']:.1f} | {r['knn']['top5']:.1f} "
            f"| {ref[0]} | {ref[1]} | {ref[2]} |"
        )
    notes = ["", "Accuracies in %; ours are mean ± std over probe seeds; kNN is cosine-weighted with k = 20. "
             "Top-10 shows — with 10 classes or fewer (it is 100 by definition). Pretraining batch: images a step "
             "over all ranks. Probe: paper = one head, Adam at a fixed lr, no selection; sweep = the best of a grid "
             "of heads on a held-out share of the train split."]
    if tables or footnotes:
        notes.append(
            "Paper numbers stand beside a row where the setting (task, bound, encoder, both datasets) and the "
            "pretraining schedule (images and images seen, within 1%) match"
            + (": " + ", ".join(sorted(tables)) if tables else "; no row does") + ". "
            "Table 2 is Deep InfoMax with the DCGAN encoder (top-1 only); Table 3 is jigsaw with ResNet50 on "
            "ImageNet-10% (mean ± std over 8 models); both probe for 200 epochs.")
    else:
        notes.append("No row matches a setting of the paper's Tables 2 or 3, so no paper numbers are shown.")
    notes.extend(footnotes)
    groups = seed_groups(results)
    if groups:
        notes += ["", "Over pretraining seeds: mean ± std over runs that differ only in the pretraining seed "
                      "(each run's number is its mean over probe seeds).", "",
                  "| task | method | encoder | pretrained on | pretraining batch | steps | probed on | probe "
                  "| pretraining seeds | top-1 | top-5 | top-10 | kNN top-1 |",
                  "|" + " --- |" * 13]
        for g in sorted(groups, key=lambda g: _sort_key(g[0])):
            r, pre = g[0], g[0]["pretraining"]
            spread = {k: _pm(*_mean_std([x[f"top{k}"]["mean"] for x in g])) for k in (1, 5, 10)}
            if r.get("num_classes", 11) <= 10:
                spread[10] = "—"
            if r.get("num_classes", 6) <= 5:
                spread[5] = "—"
            notes.append(
                f"| {pre.get('task') or '-'} | {_method(r)} | {pre.get('encoder') or '-'} | {pre.get('dataset') or '-'} "
                f"| {pre.get('global_batch')} | {r['step']} | {r['dataset']} | {_protocol(r)} "
                f"| {', '.join(str(x['pretraining']['seed']) for x in g)} | {spread[1]} | {spread[5]} | {spread[10]} "
                f"| {_pm(*_mean_std([x['knn']['top1'] for x in g]))} |")
    return "\n".join(lines + notes) + "\n"


def make_figure(results: Sequence[dict], path: str | os.PathLike) -> None:
    """A PNG of probe top-1 per run (bars, ± std over probe seeds), random-init baselines in grey, and the
    paper's top-1 marked: filled where it stands beside the row, hollow where the schedule differs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = sorted(results, key=_sort_key)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.4 * len(rows)))
    y = np.arange(len(rows))[::-1]
    colours = ["0.6" if r.get("random_init") else "tab:blue" for r in rows]
    ax.barh(y, [r["top1"]["mean"] for r in rows], xerr=[r["top1"]["std"] for r in rows], color=colours, capsize=3)
    beside, other = [], []
    for yi, r in zip(y, rows):
        paper, differs = paper_beside(r)
        if paper:
            beside.append((paper["top1"][0], yi))
        elif differs:
            other.append((paper_reference(r)["top1"][0], yi))
    if beside:
        ax.scatter(*zip(*beside), marker="D", color="tab:red", zorder=3, label="paper (same setting and schedule)")
    if other:
        ax.scatter(*zip(*other), marker="D", facecolors="none", edgecolors="tab:red", zorder=3, label="paper (other schedule)")
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Patch(color="0.6", label="random-init baseline"))
    ax.set_yticks(y, [f"{r['checkpoint_name']} → {r['dataset']}" for r in rows], fontsize=8)
    ax.set_xlabel("linear probe top-1 (%), mean ± std over probe seeds")
    ax.set_xlim(0, 100)
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    with storage.write_atomic(path) as f:  # a local file (atomically) or an s3:// / gs:// object
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.table", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="results directories of python -m eval.linear (searched recursively)")
    ap.add_argument("--out", help="also write the table to this Markdown file, and a plot of it beside (same name, .png)")
    args = ap.parse_args(argv)
    try:
        paths = find_results(args.dirs)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = []
    for path in paths:
        try:
            results.append(load_result(path))
        except ValueError as exc:
            print(f"note: skipped {exc}", file=sys.stderr)
    if not results:
        print(f"error: no eval.linear results under {', '.join(args.dirs)} ({len(paths)} other results.json "
              f"skipped); run python -m eval.linear out=DIR first", file=sys.stderr)
        return 2
    table = make_table(results)
    print(table, end="")
    if args.out:
        storage.write_text(storage.resolve(args.out), table)  # a local file (atomically) or an s3:// / gs:// object
        plot = storage.resolve(args.out).rsplit(".", 1)[0] + ".png"
        make_figure(results, plot)
        print(f"table: {args.out}; plot: {plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
