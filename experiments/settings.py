"""The experiments' settings and command line: a dataclass holds the defaults, a preset (``--quick``)
and ``key=value`` overrides change them (OmegaConf), and a bad setting is one line naming it."""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def read_settings(schema: type, overrides: list[str], preset: dict | None = None, context: str = "") -> Any:
    """An instance of the dataclass ``schema``: its defaults <- ``preset`` <- ``key=value`` ``overrides``.

    Raises ValueError (one line, starting with ``context`` when given, ending with the list of
    settings) on an item that is not key=value, an unknown key or a wrong type."""
    settings = ", ".join(f.name for f in dataclasses.fields(schema))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r} (settings: {settings})")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), preset or {}, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        msg, key = str(exc).strip().splitlines()[0], getattr(exc, "full_key", None)
        msg = f"{key}: {msg}" if key and key not in msg else msg
        raise ValueError(f"{context + ': ' if context else ''}{msg} (settings: {settings})") from None


def require_counts(cfg: Any, keys: tuple[str, ...]) -> None:
    """ValueError naming the first of ``keys`` whose value in ``cfg`` is below 1."""
    for key in keys:
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")


def defaults_yaml(schema: type) -> str:
    """The dataclass ``schema``'s defaults as YAML, for ``--help``."""
    return OmegaConf.to_yaml(OmegaConf.structured(schema))


def run_command_line(prog: str, description: str, out_help: str, quick_help: str, overrides_help: str,
                     load: Callable[[list[str], bool], Any], argv: list[str] | None) -> tuple[Any, Path, str]:
    """``--out DIR [--quick] [--threads N] key=value ...``: parse, read the settings with ``load``
    (a bad one exits through argparse with its one line), set torch's threads and make ``--out``.
    Returns ``(settings, out, the command as typed)``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    args = p.parse_args(argv)
    try:
        cfg = load(args.overrides, args.quick)
    except ValueError as err:
        p.error(str(err))
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return cfg, args.out, f"{prog} " + shlex.join(argv if argv is not None else sys.argv[1:])
