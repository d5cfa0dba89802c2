"""The demo's stages fit together, without Ray: the shard commands build what the pretraining
commands read, those commands pass pretrain's own config check, and the probe commands are valid
`eval.linear` settings pointing at the right shards (the full demo is `make demo`)."""
from pathlib import Path

import pytest

from data_prep.__main__ import main as data_prep_main
from data_prep.manifest import read_manifest
from demo.__main__ import RUNS, eval_commands, pretrain_commands, shard_commands
from eval.config import load_linear_config
from pretrain.__main__ import parse_args
from pretrain.config import load_config, validate

REPO = Path(__file__).resolve().parents[2]


def module_args(command: list[str], module: str) -> list[str]:
    """The arguments after ``python -m <module>`` (and check that it is that module)."""
    assert command[1:3] == ["-m", module], command
    return command[3:]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The demo's two shard stages (quick), run in this process through data_prep's command line."""
    out = tmp_path_factory.mktemp("demo")
    for _, command in shard_commands(out, quick=True):
        assert data_prep_main(module_args(command, "data_prep") + ["--workers", "1"]) == 0
    return out


def test_shard_stages_build_what_pretraining_reads_and_configs_validate(built, monkeypatch):
    monkeypatch.chdir(REPO)  # the demo runs from the repository root: configs/ is relative
    commands = pretrain_commands(built, quick=True, workers=2)
    assert [name for name, _ in commands] == [name for name, _, _ in RUNS]
    for name, command in commands:
        args = parse_args(module_args(command, "pretrain"))
        cfg = load_config(args.config, args.overrides)
        validate(cfg)  # shards present, split there, task/bound/encoder known, steps consistent
        assert cfg.train.num_workers == 2 and cfg.run.root == str(built / "runs")
        assert read_manifest(cfg.data.shards)["dataset"] == ("skimage-crops" if "jigsaw" in name else "sklearn-digits")


def test_probe_stages_are_valid_settings_for_each_run_and_baseline(built):
    run_dirs = {name: f"/runs/{i}" for i, (name, _, _) in enumerate(RUNS)}
    commands = eval_commands(built, quick=True, run_dirs=run_dirs)
    assert len(commands) == len(RUNS) + 2  # every run, and a random-init baseline per architecture
    outs = set()
    for log, command in commands:
        cfg = load_linear_config(None, module_args(command, "eval.linear"))
        assert Path(cfg.data).is_dir() and cfg.checkpoint[0] in run_dirs.values()
        assert cfg.random_init == log.endswith("random_init") and cfg.epochs == 5 and cfg.seeds == 2
        outs.add(cfg.out)
    assert len(outs) == len(commands)  # no two probes write the same results directory
