"""The run directory's name: the parser reads exactly what the formatter writes."""
from __future__ import annotations

from datetime import datetime

import pytest

from pretrain.config import load_config
from pretrain.run_dir import (
    CHECKPOINT_PREFIX,
    checkpoint_dir_name,
    latest_run_dir,
    new_run_dir,
    parse_run_dir_name,
    run_dir_name,
    step_of,
)

WHEN = datetime(2026, 3, 4, 5, 6, 7)


@pytest.mark.parametrize("n", [0, 1, 12])
def test_names_parse_back(n):
    for name in ("exp", "a-b", "x-20260304-050607"):  # a name may itself look like a stamp
        assert parse_run_dir_name(run_dir_name(name, WHEN, n), name) == (WHEN, n)


@pytest.mark.parametrize("dirname", [
    "exp", "exp-", "exp-2026034-050607", "exp-20260304-50607", "exp-20261304-050607",  # unpadded, no month 13
    "exp-20260304-050607-0", "exp-20260304-050607-01", "exp-20260304-050607-x", "exp-20260304-050607-1-2",
    "ex-20260304-050607", "exp-extra-20260304-050607", "other-20260304-050607",
])
def test_other_names_are_not_run_dirs_of_exp(dirname):
    assert parse_run_dir_name(dirname, "exp") is None


def test_latest_run_dir_follows_new_run_dir(tmp_path):
    cfg = load_config(None, [f"run.root={tmp_path}", "run.name=exp", "data.shards=/unused"])
    first = new_run_dir(cfg)
    first.mkdir()
    (first / "config.yaml").write_text("run: {}\n")
    second = new_run_dir(cfg)  # in the same second it gets a -1 suffix
    assert second != first
    second.mkdir()
    (second / "config.yaml").write_text("run: {}\n")
    for decoy in ("exp-extra-20991231-235959", "exp-20991231-235959"):  # another run's; no config.yaml
        (tmp_path / decoy).mkdir()
    assert latest_run_dir(tmp_path, "exp") == second
    assert latest_run_dir(tmp_path, "ex") is None
    assert latest_run_dir(tmp_path / "missing", "exp") is None


def test_checkpoint_names_parse_back():
    assert [step_of(checkpoint_dir_name(s)) for s in (0, 7, 10**9)] == [0, 7, 10**9]
    assert [step_of(n) for n in ("checkpoint_", "checkpoint_x1", f"{CHECKPOINT_PREFIX}-3", "ckpt_1")] == [None] * 4
