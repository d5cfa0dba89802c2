"""The import contracts in pyproject.toml ([tool.importlinter]) hold: the floors only point down,
no package or module loop. Checked on the tree, and on a copy given an upward import and a loop."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ast.literal_eval(re.search(r"^root_packages = (\[.*\])$", (ROOT / "pyproject.toml").read_text(), re.M).group(1))


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(lint), "--no-cache", "--no-logo", str(tree / "pyproject.toml")], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)


def test_the_tree_keeps_every_import_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_an_upward_import_or_a_loop_breaks_a_contract(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "results"))
    with open(tmp_path / "storage" / "files.py", "a") as f:
        f.write("\nfrom eval import table  # the ground floor reaching up\n")
    with open(tmp_path / "pretrain" / "models" / "registry.py", "a") as f:
        f.write("\nfrom pretrain.tasks import build_task  # tasks import models: a loop\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "storage is not allowed to import eval" in done.stdout
    assert "No cycles are allowed in pretrain." in done.stdout and "- .models -> .tasks" in done.stdout
