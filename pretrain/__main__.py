"""``python -m pretrain --config configs/X.yaml [key=value ...] [--address ADDR] [--resume RUN_DIR] [--print-config]``

Without ``--address`` a new local Ray starts on this machine, listening on 127.0.0.1 only; with one
the run joins that cluster (``docs/reliability.md`` says how to open a Ray to a network on purpose).
``--resume RUN_DIR`` continues a run whose driver died: its saved ``config.yaml`` is the base
(``--config`` is not needed; ``key=value`` still overrides, e.g. ``train.steps=2000`` to extend).
RUN_DIR may be a URL (``s3://BUCKET/runs/NAME-TIME``: a run with a URL ``run.root`` or ``run.storage_path``).
Config errors are reported in one line, before Ray starts, with exit status 2.
``--plan [--tflops T] [--measure]`` prints what the run would cost (FLOPs, PFLOPs, images/s, hours,
the data side's bound; with ``--measure`` a few steps timed on this machine; see :mod:`pretrain.plan`)
and how a local run fits this machine's CPUs, and exits without starting Ray.
Ctrl-C or SIGTERM stops a run where ``--resume`` continues it (exit 130 or 143; :mod:`pretrain.interrupt`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import storage
from pretrain.run_dir import CONFIG_FILE
from pretrain.config import ConfigError, PretrainConfig, defaults_help, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pretrain",
        description="Self-supervised pretraining (jigsaw CE/MI, InfoMax) on Ray Train.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys, their defaults and what each does (override with key=value):\n"
               + defaults_help(PretrainConfig))
    p.add_argument("--config", help="YAML config (see configs/); values override the dataclass defaults")
    p.add_argument("--address", default=None,
                   help="Ray cluster address to join (e.g. ray://host:10001 or auto); default: start a local Ray")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue this run directory from its latest checkpoint (after Ctrl-C, or the driver died)")
    p.add_argument("--plan", action="store_true",
                   help="print the run's cost (FLOPs per step, PFLOPs, images/s needed, hours) and exit; no Ray")
    p.add_argument("--measure", action="store_true",
                   help="with --plan: also time a few training steps of one rank on this machine's CPU and "
                        "estimate the run from them (what a machine without a GPU will take)")
    p.add_argument("--tflops", type=float, default=None,
                   help="accelerator rate of the whole run for --plan, TFLOP/s (default: 40%% of one H200's "
                        "989 TFLOP/s dense bf16 peak)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (defaults <- YAML <- key=value) and exit without training")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides in dotted form, applied after the YAML (e.g. train.steps=100)")
    args = p.parse_args(argv)
    if args.config is None and args.resume is None:
        p.error("give --config FILE (or --resume RUN_DIR)")
    if args.measure and not args.plan:
        p.error("--measure goes with --plan")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plan or args.print_config:
        return run(args)
    from pretrain.interrupt import Interrupted, raising_on_signals

    with raising_on_signals():
        try:
            return run(args)
        except Interrupted as exc:  # Ctrl-C or SIGTERM; during training launch has said where it stopped
            print(exc, file=sys.stderr, flush=True)
            return exc.exit_code


def run(args: argparse.Namespace) -> int:
    from pretrain.preflight import joins_cluster, local_ray_on_loopback

    if not joins_cluster(args.address):
        local_ray_on_loopback()  # before anything imports ray
    try:
        if args.resume is not None:
            run_dir = storage.as_path(args.resume)
            if not storage.isfile(storage.join(run_dir, CONFIG_FILE)):
                raise ConfigError(f"--resume {run_dir}: no {CONFIG_FILE} there; is it a run directory?")
            cfg = load_config(storage.join(run_dir, CONFIG_FILE), args.overrides)
        else:
            run_dir = None
            cfg = load_config(args.config, args.overrides)
        if args.print_config:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
            return 0
        from pretrain.config import validate

        validate(cfg, check_shards=not args.plan)
    except (ConfigError, FileNotFoundError, storage.StorageError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    if args.plan:
        from pretrain.plan import DEFAULT_TFLOPS, format_bounds, format_plan, local_fit, plan

        name = Path(args.config).stem if args.config else None
        cost = plan(cfg, tflops=args.tflops or DEFAULT_TFLOPS, name=name, measure=args.measure)
        print(format_plan(cost))
        print(format_bounds(cost))
        if not joins_cluster(args.address):
            print(local_fit(cfg))
        return 0

    from pretrain.fatal import RunFailed
    from pretrain.run_lock import RunDirInUse
    from pretrain.tracking import TrackingError
    from pretrain.train import TrainingStopped, launch

    try:
        launch(cfg, address=args.address, run_dir=run_dir)
    except ConfigError as exc:  # found by the checks before Ray starts, or the cluster's resources
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"training stopped: {exc}", file=sys.stderr)
        return 1
    except (RunFailed, RunDirInUse, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TrackingError as exc:
        print(f"tracking error: {exc}", file=sys.stderr)
        return 2
    return 0  # launch printed the summary: run directory, checkpoint, the next command


if __name__ == "__main__":
    sys.exit(main())
