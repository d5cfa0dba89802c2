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


def test_print_config_shows_the_resolved_config_and_runs_nothing(tmp_path, capsys, monkeypatch):
    import yaml

    from cluster.submit import main as submit
    from eval.linear import main as linear
    from pretrain.__main__ import main as pretrain

    config = ROOT / "configs" / "demo_infomax_eta.yaml"
    assert pretrain(["--config", str(config), "train.steps=7", "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["steps"] == 7 and shown["task"]["estimator"] == "eta-mine"
    assert shown["optim"]["beta2"] == 0.999 and shown["track"]["mlflow_uri"] is None  # defaults filled in

    assert linear(["checkpoint=runs/x", "data=shards/y", "epochs=3", "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["epochs"] == 3 and shown["checkpoint"] == ["runs/x"] and shown["knn_k"] == 20

    # cluster.submit checks and names the run as it would submit it, then prints instead of submitting
    assert submit(["pretrain", "--address", "http://127.0.0.1:1", "--config", str(config),
                   f"run.root={tmp_path}", "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["run"]["root"] == str(tmp_path) and shown["run"]["name"] == "demo_infomax_eta"

    # cluster.resume becomes `python -m pretrain ... --print-config` (the flag is passed on to the exec)
    import cluster.resume

    execs = []
    monkeypatch.setattr(cluster.resume.os, "execv", lambda path, cmd: execs.append(cmd))
    assert cluster.resume.main(["--config", str(config), f"run.root={tmp_path}", "run.name=r", "--print-config"]) == 0
    (command,) = execs
    assert command[1:4] == ["-m", "pretrain", "--config"] and command[-1] == "--print-config"
