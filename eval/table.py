"""Gather many `results.json` into one Markdown table, with the paper's numbers where the setting matches.

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

import storage
from eval.paper_results import paper_reference

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


def make_table(results: Sequence[dict]) -> str:
    """One Markdown table: a row per result, ours (mean ± std over seeds) beside the paper's where it matches."""
    rows = sorted(results, key=lambda r: (r["dataset"], r["pretraining"].get("task") or "", _method(r), r["checkpoint_name"]))
    head = ("| checkpoint | task | method | encoder | pretrained on | probed on | epochs | seeds "
            "| top-1 | top-5 | top-10 | kNN top-1 | kNN top-5 | paper top-1 | paper top-5 | paper top-10 |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    tables = set()
    for r in rows:
        pre = r["pretraining"]
        paper = paper_reference(r)
        if paper:
            tables.add(paper["table"])
        ref = [
            (_pm(*paper[k]) + f" ({paper['table']})" if k == "top1" else _pm(*paper[k])) if paper and k in paper else "–"
            for k in ("top1", "top5", "top10")
        ]
        encoder = pre.get("encoder") or "-"
        if pre.get("depth"):
            encoder += f" (depth {pre['depth']})"
        lines.append(
            f"| {r['checkpoint_name']} | {pre.get('task') or '-'} | {_method(r)} | {encoder} | {pre.get('dataset') or '-'} "
            f"| {r['dataset']} | {r['epochs']} | {len(r['seeds'])} "
            f"| {_pm(r['top1']['mean'], r['top1']['std'])} | {_pm(r['top5']['mean'], r['top5']['std'])} "
            f"| {_pm(r['top10']['mean'], r['top10']['std'])} | {r['knn']['top1']:.1f} | {r['knn']['top5']:.1f} "
            f"| {ref[0]} | {ref[1]} | {ref[2]} |"
        )
    notes = ["", "Accuracies in %; ours are mean ± std over probe seeds, kNN is cosine-weighted with k = 20."]
    if tables:
        notes.append(
            "Paper numbers are shown where the setting matches (task, bound, encoder and both datasets): "
            + ", ".join(sorted(tables))
            + " (Table 2: Deep InfoMax, DCGAN encoder, top-1 only; Table 3: jigsaw, ResNet50, ImageNet-10%, "
            "mean ± std over 8 models; both probe for 200 epochs)."
        )
    else:
        notes.append("No row matches a setting of the paper's Tables 2 or 3, so no paper numbers are shown.")
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.table", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="results directories of python -m eval.linear (searched recursively)")
    ap.add_argument("--out", help="also write the table to this Markdown file")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
