"""Runs on the cluster: continue a named pretraining run if it exists, else start it.

    python -m cluster.resume --config configs/X.yaml run.name=NAME run.root=/shared/runs [key=value ...]

`python -m pretrain` gives every launch a new run directory `<run.root>/<run.name>-<time>` and
continues an old one only with `--resume RUN_DIR`. A cluster job is submitted from a machine that
may not see the shared storage, so the choice is made here, where it is visible: the latest run
directory of `run.name` under `run.root` (one holding the run's `config.yaml`) is resumed from its
last checkpoint, with the same `key=value` overrides (raise `train.steps` to extend a finished
run); with none, a new run starts from `--config`. Either way this process becomes
`python -m pretrain`, so its exit status and logs are the job's.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import yaml

RUN_DIR = r"{name}-(\d{{8}}-\d{{6}})(?:-(\d+))?"  # pretrain.train.new_run_dir: <name>-<YYYYmmdd-HHMMSS>[-n]
CONFIG_FILE = "config.yaml"  # written into every run directory by pretrain.train.launch


def config_value(config: dict, overrides: Sequence[str], dotted: str):
    """`dotted` (e.g. "run.root") after the `key=value` overrides (the last one wins), else from
    the YAML mapping `config`, else None. A malformed override raises ValueError."""
    for item in reversed(overrides):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value, e.g. train.steps=1000")
        if key.strip() == dotted:
            return yaml.safe_load(value) if value else None
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def latest_run_dir(root: Path, name: str) -> Path | None:
    """The newest `<root>/<name>-<time>[-n]` holding a config.yaml, or None."""
    pattern = re.compile(RUN_DIR.format(name=re.escape(name)))
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = pattern.fullmatch(child.name)
            if match and (child / CONFIG_FILE).is_file():
                found.append(((match.group(1), int(match.group(2) or 0)), child))
    return max(found)[1] if found else None


def pretrain_command(config: Path, overrides: Sequence[str]) -> list[str]:
    """The `python -m pretrain` command line this job runs (resuming when the run exists)."""
    yaml_config = yaml.safe_load(config.read_text()) or {}
    name = config_value(yaml_config, overrides, "run.name")
    root = config_value(yaml_config, overrides, "run.root")
    previous = latest_run_dir(Path(str(root)), str(name)) if name and root else None
    if previous is None:
        print(f"run {name}: starting under {root}", flush=True)
        return [sys.executable, "-m", "pretrain", "--config", str(config), *overrides]
    print(f"run {name}: resuming {previous} from its last checkpoint", flush=True)
    return [sys.executable, "-m", "pretrain", "--resume", str(previous), *overrides]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.resume", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="pretraining YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        print(f"error: --config {args.config}: no such file", file=sys.stderr)
        return 2
    try:
        command = pretrain_command(args.config, args.overrides)
    except (ValueError, yaml.YAMLError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
