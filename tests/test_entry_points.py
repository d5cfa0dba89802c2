"""Every command has a console script under one prefix, and each one starts (``--help``)."""
from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "eta-mine-"
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
PACKAGES = ("pretrain", "eval", "data_prep", "cluster", "experiments", "demo")


def runnable_modules() -> set[str]:
    """Modules a user runs with ``python -m``: ``__main__.py`` files and modules with a main guard."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if path.name == "__main__.py" or re.search(r"^if __name__ == .__main__.:", text, re.MULTILINE):
                found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_every_runnable_module_has_a_prefixed_script():
    targets = {target.split(":")[0] for target in SCRIPTS.values()}
    for module in sorted(runnable_modules()):
        package_main = module.rsplit(".", 1)[0] + ".__main__"
        assert module in targets or package_main in targets, f"{module}: no console script in pyproject.toml"
    assert all(name.startswith(PREFIX) for name in SCRIPTS), sorted(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_starts(name, capsys):
    module, func = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
