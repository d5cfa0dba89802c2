"""The end of a pretraining run on the driver: a picture of its curves and a few lines to read.

:func:`write_curves` draws loss, MI and η against the step from ``metrics.jsonl`` into
``curves.png`` in the run directory (matplotlib, no display needed). :func:`summary_lines` says what
the run did (wall time, images/s, the final loss/MI/η), where its checkpoint is, and the command
that probes it.
"""
from __future__ import annotations

import io
import json
from datetime import timedelta

import storage

CURVES_FILE = "curves.png"
# (metrics.jsonl key, axis label) of the panels, in order; a run draws the ones it records
CURVES = (("loss", "loss"), ("mi", "MI estimate"), ("eta", "η"))


def read_records(metrics_file) -> list[dict]:
    """The progress records of ``metrics.jsonl`` (one a report; the later of two for one step)."""
    if not storage.isfile(metrics_file):
        return []
    by_step: dict[int, dict] = {}
    for line in storage.read_text(metrics_file).splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
        if "step" in record and "samples_per_s" in record:
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def write_curves(run_dir, records: list[dict], title: str) -> str | None:
    """Draw ``records``' loss, MI and η against the step into ``run_dir/curves.png``; return its path
    (None when there is nothing to draw)."""
    panels = [(key, label) for key, label in CURVES if any(key in r for r in records)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = storage.join(run_dir, CURVES_FILE)
    storage.write_bytes(path, buf.getvalue())
    return path


def summary_lines(records: list[dict], *, wall_s: float, samples_per_image: int, checkpoint, run_dir,
                  shards: str, curves: str | None) -> list[str]:
    """What a finished run prints last (every figure from ``records`` of this launch)."""
    lines = []
    if records:
        last = records[-1]
        rate = sum(r["samples_per_s"] for r in records) / len(records) / max(samples_per_image, 1)
        finals = [f"{name} {last[key]:.4g}" for key, name in (("loss", "loss"), ("mi", "MI"), ("eta", "η")) if key in last]
        lines.append(f"done: step {last['step']} in {timedelta(seconds=round(wall_s))} (wall, Ray's start-up included), "
                     f"{rate:,.1f} images/s (mean of the reports); final {', '.join(finals)}")
    else:
        lines.append(f"done in {timedelta(seconds=round(wall_s))}: no step reported in this launch")
    lines.append(f"run directory: {run_dir}")
    if checkpoint is not None:
        lines.append(f"latest checkpoint: {checkpoint}")
    if curves is not None:
        lines.append(f"curves: {curves}")
    lines.append(f"next, a linear probe of the encoder: python -m eval.linear checkpoint={run_dir} data={shards}")
    return lines
