"""Timing ways of doing one thing side by side on a shared machine: the calls alternate (a, b, a, b,
...), so load from other jobs that comes and goes hits each alike, and medians are compared.

Used by ``linear_probe_sweep.py`` (the one-pass sweep against one head) and ``online_probe_cost.py``
(training steps with and without the online probe); run them from the repository root with
``PYTHONPATH=.``.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_alternately(runs: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every timed call of each of ``runs``: ``warmup`` untimed rounds, then ``rounds`` rounds,
    each calling every run once in the dict's order. Returns {name: [seconds] (rounds)}."""
    if rounds < 1 or not runs:
        raise ValueError(f"time_alternately: want >= 1 round of >= 1 run, got {rounds} of {len(runs)}")
    for _ in range(warmup):
        for run in runs.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def medians(seconds: dict[str, list[float]]) -> dict[str, float]:
    """{name: median seconds} of :func:`time_alternately`'s result."""
    return {name: statistics.median(s) for name, s in seconds.items()}
