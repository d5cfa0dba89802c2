"""From a user's shards to the paper's Table 2 or Table 3: every run, every probe, one table.

    python -m reproduce table3 --data-root /shared/shards --out /shared/reproduce --dry-run
    python -m reproduce table3 --data-root /shared/shards --out /shared/reproduce [--address URL]
    python -m reproduce table2 --data-root data/miniature --miniature      # toy scale, offline

Reads top to bottom:

1. :func:`reproduce.run_list.build_run_list`: the table's pretraining runs (Table 3: jigsaw CE, DV-MINE and η-MINE on
   ImageNet-10%; Table 2: η-MINE and DV-MINE InfoMax and the supervised baseline on CIFAR-10 and
   STL-10) for ``--seeds`` pretraining seeds, and the probes of each (Table 2 also probes across:
   C10→S10, S10→C10), each with ``--probe-seeds`` probe seeds. Every run has a fixed name, so
   ``reproduce.run.pretrain_state`` can tell a finished run, a half-finished one and one not started.
2. :func:`reproduce.run_list.add_costs`: each config's cost from :func:`pretrain.plan.plan` (FLOPs per step from
   ``torch.utils.flop_counter`` on one batch of the config's shape, the data rate it needs and gets),
   the probes' FLOPs, total PFLOPs and hours at a stated sustained TFLOP/s. ``--dry-run`` stops here
   and prints the run list; ``--run-list-out`` writes it as JSON.
3. :mod:`reproduce.run`: ``run_locally`` (one run after another, in this process) or ``run_on_cluster`` (Ray jobs,
   as many at once as the cluster's GPUs hold): finished runs and probes are skipped, a
   half-finished run continues from its last checkpoint (``python -m pretrain --resume``
   semantics: ``pretrain_config`` here, :mod:`cluster.resume` in a job).
4. :mod:`reproduce.aggregate`: ``aggregate`` and ``paper_table``: mean ± std over all models of a method (pretraining
   seeds × probe seeds; the paper's Table 3 is over 4 × 2 = 8), the paper's numbers beside ours.

``--miniature`` runs the same path at toy scale on data that ships with scikit-learn and
scikit-image (built under ``--data-root`` if missing): small encoders, tens of steps. Its numbers
only show that the path works; they say nothing about the paper's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import storage
from pretrain.plan import DEFAULT_TFLOPS
from reproduce.aggregate import aggregate, collect, paper_table
from reproduce.run_list import (MINIATURE_SEEDS, PAPER_PROBE_SEEDS, PAPER_SEEDS, TABLES, ReproduceError, add_costs,
                            build_run_list, check_data, describe, missing_shards, run_list_json)
from reproduce.run import refresh_status, run_locally, run_on_cluster


def reproduce(table: str, data_root: str | os.PathLike, out: str | os.PathLike, *, seeds: int = PAPER_SEEDS,
              probe_seeds: int = PAPER_PROBE_SEEDS, miniature: bool = False, methods: list[str] | None = None,
              address: str | None = None, gpus: int | None = None, dry_run: bool = False,
              run_list_out: str | os.PathLike | None = None, tflops: float = DEFAULT_TFLOPS) -> str | None:
    """RunList, run what is not finished, and write ``<out>/table.md``; returns the table (None for a dry run)."""
    if table not in TABLES:
        raise ReproduceError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    if not dry_run:  # before the run list: the miniature's supervised runs read the class count of its data
        check_data(table, Path(data_root).resolve(), miniature, methods)
    run_list = build_run_list(table, data_root, out, seeds=seeds, probe_seeds=probe_seeds, miniature=miniature,
                      methods=methods)
    run_list.tflops = tflops
    add_costs(run_list)
    refresh_status(run_list)
    missing = {} if miniature else missing_shards(table, Path(data_root).resolve(), methods)  # a dry run's check
    for run in run_list.runs:
        run.status = "no shards" if run.dataset in missing else run.status
    for probe in run_list.probes:
        probe.status = "no shards" if {probe.dataset, probe.pretrained_on} & set(missing) else probe.status
    summary = run_list_json(run_list)
    print(describe(summary), flush=True)
    for line in missing.values():
        print(line, flush=True)
    if run_list_out is not None:
        Path(run_list_out).write_text(json.dumps(summary, indent=1) + "\n")
    if dry_run:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "run_list.json").write_text(json.dumps(summary, indent=1) + "\n")
    if address is None:
        run_locally(run_list)
    else:
        run_on_cluster(run_list, address, gpus)
    agg = aggregate(collect(run_list))
    text = paper_table(run_list, agg, seeds, probe_seeds)
    (Path(out) / "table.md").write_text(text)
    (Path(out) / "table.json").write_text(json.dumps(
        [{"method": k[0], "pretrained_on": k[1], "dataset": k[2], **v} for k, v in sorted(agg.items())], indent=1) + "\n")
    return text


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__.splitlines()[0])
    ap.add_argument("table", choices=sorted(TABLES), help="table2: Deep InfoMax on CIFAR-10/STL-10; table3: jigsaw on ImageNet-10%%")
    ap.add_argument("--data-root", required=True,
                    help="folder holding the shards: cifar10/ and stl10/ (table2) or imagenet10/ (table3); "
                         "with --miniature, where the offline stand-ins are built")
    ap.add_argument("--out", help="runs, probes and the table (default runs/reproduce/<table>[-miniature]); "
                                  "with --address, on storage every node and this machine mount")
    ap.add_argument("--seeds", type=int, help=f"pretraining seeds per method (default {PAPER_SEEDS} as the paper; {MINIATURE_SEEDS} with --miniature)")
    ap.add_argument("--probe-seeds", type=int, default=PAPER_PROBE_SEEDS,
                    help=f"probe seeds per encoder (paper: {PAPER_PROBE_SEEDS}; {PAPER_SEEDS * PAPER_PROBE_SEEDS} models = {PAPER_SEEDS} × {PAPER_PROBE_SEEDS})")
    ap.add_argument("--methods", help="comma-separated subset of the table's methods (dv-mine, eta-mine, ce, supervised)")
    ap.add_argument("--address", help="Ray job API (dashboard) URL: runs go out as jobs; default: here, one after another")
    ap.add_argument("--gpus", type=int, help="GPUs the jobs may fill at once (default: what the cluster reports)")
    ap.add_argument("--dry-run", action="store_true", help="print the run list (runs, FLOPs, hours) and stop")
    ap.add_argument("--run-list-out", "--plan-out", dest="run_list_out", help="write the run list as JSON to this file")
    ap.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS, help="sustained TFLOP/s for the hours in the run list")
    ap.add_argument("--miniature", action="store_true",
                    help="the same path at toy scale on offline data (digits, scikit-image crops), minutes on a CPU")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = args.out or f"runs/reproduce/{args.table}{'-miniature' if args.miniature else ''}"
    try:
        storage.local_only(out, "--out")
        seeds = args.seeds if args.seeds is not None else (MINIATURE_SEEDS if args.miniature else PAPER_SEEDS)
        text = reproduce(args.table, args.data_root, out, seeds=seeds, probe_seeds=args.probe_seeds,
                         miniature=args.miniature, methods=args.methods.split(",") if args.methods else None,
                         address=args.address, gpus=args.gpus, dry_run=args.dry_run, run_list_out=args.run_list_out,
                         tflops=args.tflops)
    except (ReproduceError, OSError, ValueError) as exc:  # OSError: FileNotFoundError, storage.StorageError
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if text is not None:
        print(text, end="")
        print(f"table: {Path(out) / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
