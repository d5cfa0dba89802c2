"""W processes of one gloo process group on 127.0.0.1, for tests of what ranks compute together without
Ray. A fresh Python imports the function's module (and torch with it) once and forks the ranks from it:
a spawned rank imports them itself (a few CPU-seconds each), and a fork of the test process would copy
its threads (Ray's, pytest-xdist's).

    run_ranks(2, "tests.pretrain.shard_runs:run_bounds", bounds, steps, out)  # fn(rank, world, *args) on each rank
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.ray_head import free_port

REPO = Path(__file__).resolve().parents[2]


def run_ranks(world: int, fn: str, *args) -> None:
    """``fn(rank, world, *args)`` on ``world`` ranks of a gloo group; ``fn`` is ``"module:name"``, ``args``
    plain JSON values. Raises CalledProcessError when a rank failed (its traceback on stderr)."""
    subprocess.run([sys.executable, "-m", "tests.support.ranks", json.dumps([world, fn, list(args)])], cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)


def _rank(rank: int, world: int, port: int, fn, args: list) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def _main(world: int, fn: str, args: list) -> None:
    import torch._dynamo  # noqa: F401 - an optimiser's first parameter group imports it (torch._compile): once, here
    import torch.multiprocessing as mp

    module, name = fn.split(":")
    target = getattr(importlib.import_module(module), name)
    mp.start_processes(_rank, args=(world, free_port(), target, args), nprocs=world, join=True, start_method="fork")


if __name__ == "__main__":
    _main(*json.loads(sys.argv[1]))
