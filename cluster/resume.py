"""Runs on the cluster: continue a named pretraining run if it exists, else start it.

    python -m cluster.resume --config configs/X.yaml run.name=NAME run.root=/shared/runs [key=value ...]

`python -m pretrain` gives every launch a new run directory `<run.root>/<run.name>-<time>` and
continues an old one only with `--resume RUN_DIR`. A cluster job is submitted from a machine that
may not see the shared storage, so the choice is made here, where it is visible: the latest run
directory of `run.name` under `run.root` (one holding the run's `config.yaml`) is resumed from its
last checkpoint, with the same `key=value` overrides (raise `train.steps` to extend a finished
run); with none, a new run starts from `--config`. Either way this process becomes
`python -m pretrain`, so its exit status and logs are the job's. Run directories in a bucket
(`run.root=s3://...`, or a URL `run.storage_path`, which then holds them) are found the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import storage
from pretrain.config import ConfigError, PretrainConfig, merge_config
from pretrain.run_dir import latest_run_dir, run_home


def pretrain_command(config: Path, overrides: Sequence[str]) -> list[str]:
    """The `python -m pretrain` command line this job runs (resuming when the run exists)."""
    run = merge_config(PretrainConfig, config, list(overrides)).run  # the defaults, as pretrain sees them
    name, root = run.name, run_home(run)  # where pretrain.run_dir.new_run_dir puts the run
    previous = latest_run_dir(root, name) if name else None
    if previous is None:
        print(f"run {name}: starting under {root}", flush=True)
        return [sys.executable, "-m", "pretrain", "--config", str(config), *overrides]
    print(f"run {name}: resuming {previous} from its last checkpoint", flush=True)
    return [sys.executable, "-m", "pretrain", "--resume", str(previous), *overrides]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.resume", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="pretraining YAML")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config of the run it would start or resume, and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        command = pretrain_command(args.config, args.overrides) + (["--print-config"] if args.print_config else [])
    except (ConfigError, storage.StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
