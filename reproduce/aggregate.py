"""A table from the probes' results: mean ± sample std over every model of a method, the paper's
numbers beside ours."""
from __future__ import annotations

import json
from pathlib import Path

from eval.linear import KS as TOP_K, mean_std
from eval.paper_results import TABLE2_TOP1, TABLE3
from reproduce.run_list import RunList

KS = tuple(f"top{k}" for k in TOP_K)  # the probe's accuracies, as eval.linear reports them
METHOD_NAMES = {"dv-mine": "DV-MINE", "eta-mine": "η-MINE", "ce": "CE", "supervised": "Sup."}
DATASET_NAMES = {"cifar10": "C10", "stl10": "S10", "imagenet10": "ImageNet-10%"}

# ============================================================================ 4. the table


def collect(run_list: RunList) -> list[dict]:
    """One record per (probe, probe seed) found on disk: method, datasets, pretraining and probe seed, top-k."""
    records = []
    for probe in run_list.probes:
        results = Path(probe.out) / "results.json"
        if not results.is_file():
            continue
        for r in json.loads(results.read_text())["per_seed"]:
            records.append({"method": probe.method, "pretrained_on": probe.pretrained_on, "dataset": probe.dataset,
                            "seed": probe.seed, "probe_seed": r["seed"], **{k: float(r[k]) for k in KS}})
    return records


def aggregate(records: list[dict]) -> dict[tuple, dict]:
    """(method, pretrained on, probed on) -> {"models": n, top-k: {"mean", "std"}}: over every model.

    A model is one (pretraining seed, probe seed); std is the sample std (ddof 1), 0 for one model.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["pretrained_on"], r["dataset"]), []).append(r)
    out = {}
    for key, rows in groups.items():
        out[key] = {"models": len(rows)}
        for k in KS:
            out[key][k] = mean_std([r[k] for r in rows])
    return out


def _cell(stat: dict | None, models: int | None = None, expected: int | None = None) -> str:
    """A table cell: "mean ± std", with "(n of N)" where a cell has fewer models than planned."""
    if stat is None:
        return "–"
    text = f"{stat['mean']:.1f} ± {stat['std']:.1f}"
    return text if models is None or models == expected else f"{text} ({models} of {expected})"


def paper_table(run_list: RunList, agg: dict[tuple, dict], seeds: int, probe_seeds: int) -> str:
    """The Markdown table: ours (mean ± std over all models) beside the paper's numbers."""
    expected = seeds * probe_seeds
    lines = []
    if run_list.miniature:
        lines += ["**Miniature**: a toy-scale stand-in (scikit-learn digits for CIFAR-10, scikit-image crops at "
                  "32×32 for STL-10 and at 292×292 for ImageNet-10%; small encoders, tens of steps). It shows that "
                  "the path runs end to end; its numbers are not comparable with the paper's, which are shown for "
                  "the layout only.", ""]
    if run_list.table == "table3":
        lines += ["Table 3: jigsaw pretraining on ImageNet-10%, linear probe on ImageNet-10% (top-k %).", "",
                  "| method | models | top-1 | top-5 | top-10 | paper top-1 | paper top-5 | paper top-10 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for method in ("dv-mine", "eta-mine", "ce"):
            a = agg.get((method, "imagenet10", "imagenet10"))
            paper = TABLE3[method]
            ours = [_cell(a[k] if a else None) for k in KS]
            theirs = [f"{paper[k][0]:.1f} ± {paper[k][1]:.1f}" for k in KS]
            lines.append(f"| {METHOD_NAMES[method]} | {a['models'] if a else 0} of {expected} | "
                         + " | ".join(ours + theirs) + " |")
    else:
        methods = ("dv-mine", "eta-mine", "supervised")
        lines += ["Table 2: Deep InfoMax (DCGAN encoder, 32×32), linear probe top-1 %, pretrain → probe dataset.", "",
                  "| pretrain → probe | " + " | ".join(METHOD_NAMES[m] for m in methods) + " | "
                  + " | ".join(f"paper {METHOD_NAMES[m]}" for m in methods) + " |",
                  "|" + " --- |" * (1 + 2 * len(methods))]
        for pre, probe in (("cifar10", "cifar10"), ("cifar10", "stl10"), ("stl10", "cifar10"), ("stl10", "stl10")):
            paper = TABLE2_TOP1[(pre, probe)]
            ours = []
            for m in methods:
                a = agg.get((m, pre, probe))
                ours.append(_cell(a["top1"], a["models"], expected) if a else ("–" if m not in paper else "not run"))
            theirs = [f"{paper[m]:.1f}" if m in paper else "–" for m in methods]
            lines.append(f"| {DATASET_NAMES[pre]} → {DATASET_NAMES[probe]} | " + " | ".join(ours + theirs) + " |")
    lines += ["", f"Ours: mean ± std (sample std) over all models of a method, a model being one of {seeds} "
              f"pretraining seeds × {probe_seeds} probe seeds; a cell with fewer models says how many it has."]
    return "\n".join(lines) + "\n"


