"""reproduce: the run list of each table, the 8-model aggregate, and the miniature end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reproduce import driver, run as rrun, run_list as rlist
from reproduce.aggregate import aggregate, collect, paper_table
from reproduce.run_list import build_run_list


def test_table3_run_list_is_three_methods_times_the_seeds(tmp_path):
    run_list = build_run_list("table3", tmp_path / "data", tmp_path / "out", seeds=4, probe_seeds=2)
    assert [(r.method, r.seed) for r in run_list.runs] == [(m, s) for m in ("ce", "dv-mine", "eta-mine") for s in range(4)]
    assert {r.config for r in run_list.runs} == {"configs/jigsaw_ce_imagenet10.yaml", "configs/jigsaw_dv_imagenet10.yaml",
                                             "configs/jigsaw_eta_imagenet10.yaml"}
    assert all(r.steps == 2_560_000 for r in run_list.runs)  # 200 epochs of 128K images, 10 a step
    assert len({r.name for r in run_list.runs}) == 12
    for r in run_list.runs:
        assert f"run.seed={r.seed}" in r.overrides and f"data.shards={tmp_path / 'data' / 'imagenet10'}" in r.overrides
    assert len(run_list.probes) == 12
    assert {(p.dataset, p.probe_seeds, p.epochs) for p in run_list.probes} == {("imagenet10", 2, 200)}


def test_table2_run_list_has_cross_probes_and_the_supervised_column(tmp_path):
    run_list = build_run_list("table2", tmp_path / "data", tmp_path / "out", seeds=2, probe_seeds=2)
    runs = {(r.method, r.dataset, r.seed): r for r in run_list.runs}
    assert len(runs) == 12 and set(runs) == {(m, d, s) for m in ("dv-mine", "eta-mine", "supervised")
                                             for d in ("cifar10", "stl10") for s in range(2)}
    assert runs[("dv-mine", "stl10", 0)].config == "configs/infomax_dv_stl10.yaml"
    assert runs[("supervised", "cifar10", 1)].config == "configs/supervised_cifar10.yaml"
    probes = {(p.method, p.pretrained_on, p.dataset) for p in run_list.probes}
    assert probes == {("dv-mine", "cifar10", "cifar10"), ("dv-mine", "cifar10", "stl10"), ("dv-mine", "stl10", "stl10"),
                      ("dv-mine", "stl10", "cifar10"), ("eta-mine", "cifar10", "cifar10"), ("eta-mine", "cifar10", "stl10"),
                      ("eta-mine", "stl10", "stl10"), ("eta-mine", "stl10", "cifar10"),
                      ("supervised", "cifar10", "cifar10"), ("supervised", "stl10", "stl10")}
    assert len(run_list.probes) == 10 * 2
    # the probes read the probe dataset's sizes where no shards exist yet
    assert {(p.dataset, p.num_train, p.num_test) for p in run_list.probes} == {("cifar10", 50_000, 10_000), ("stl10", 5_000, 8_000)}


def test_dry_run_writes_the_run_list_with_costs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rlist, "DATA_SECONDS", 0.2)  # pretrain.plan times each config's data side
    run_list_file = tmp_path / "run_list.json"
    assert driver.main(["table2", "--data-root", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
                           "--seeds", "1", "--probe-seeds", "2", "--dry-run", "--run-list-out", str(run_list_file)]) == 0
    run_list = json.loads(run_list_file.read_text())
    assert run_list["table"] == "table2" and len(run_list["runs"]) == 6 + 10
    for run in run_list["runs"]:
        assert {"stage", "method", "seed", "config", "steps", "flops"} <= set(run) and run["flops"] > 0
    pre = next(r for r in run_list["runs"] if r["stage"] == "pretrain" and r["method"] == "eta-mine")
    assert pre["flops"] == pytest.approx(pre["flops_per_step"] * 78_100) and pre["hours_at_data_rate"] > 0
    assert run_list["total_flops"] == pytest.approx(sum(r["flops"] for r in run_list["runs"]))
    assert run_list["hours"] == pytest.approx(run_list["total_flops"] / (run_list["tflops"] * 1e12) / 3600)
    out = capsys.readouterr().out
    assert "6 pretraining runs, 10 probes" in out and "GPU-minutes at a sustained" in out
    # no shards under --data-root: every run says so (not "[to run]"), with the commands that build them
    assert {r["status"] for r in run_list["runs"]} == {"no shards"}
    assert "[to run]" not in out and f"no cifar10 shards in {tmp_path / 'none'}" in out and "no stl10 shards in" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing else
    assert driver.main(["table3", "--data-root", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no imagenet10 shards in" in capsys.readouterr().err  # before any run, with the command to build them


def test_eight_models_aggregate_as_by_hand(tmp_path):
    run_list = build_run_list("table3", tmp_path / "data", tmp_path / "out", seeds=4, probe_seeds=2)
    top1 = {0: (10.0, 12.0), 1: (11.0, 13.0), 2: (9.0, 8.0), 3: (14.0, 11.0)}  # pretraining seed -> probe seeds 0, 1
    for probe in run_list.probes:
        if probe.method == "eta-mine":
            per_seed = [{"seed": s, "top1": t, "top5": t + 10, "top10": 2 * t} for s, t in enumerate(top1[probe.seed])]
        elif probe.method == "ce" and probe.seed < 3:  # 3 of 4 CE encoders probed so far
            per_seed = [{"seed": s, "top1": 12.0, "top5": 28.0, "top10": 37.0} for s in range(2)]
        else:
            continue
        Path(probe.out).mkdir(parents=True)
        (Path(probe.out) / "results.json").write_text(json.dumps({"per_seed": per_seed}))
    agg = aggregate(collect(run_list))
    eta = agg[("eta-mine", "imagenet10", "imagenet10")]
    # by hand: values 10 12 11 13 9 8 14 11 -> mean 88 / 8 = 11; squared deviations 1 1 0 4 4 9 9 0 -> 28 / 7 = 4
    assert eta["models"] == 8
    assert eta["top1"] == pytest.approx({"mean": 11.0, "std": 2.0})
    assert eta["top5"] == pytest.approx({"mean": 21.0, "std": 2.0})
    assert eta["top10"] == pytest.approx({"mean": 22.0, "std": 4.0})
    assert agg[("ce", "imagenet10", "imagenet10")]["models"] == 6
    table = paper_table(run_list, agg, seeds=4, probe_seeds=2)
    row = next(line for line in table.splitlines() if line.startswith("| η-MINE"))
    assert row == "| η-MINE | 8 of 8 | 11.0 ± 2.0 | 21.0 ± 2.0 | 22.0 ± 4.0 | 11.0 ± 1.1 | 24.1 ± 2.2 | 32.7 ± 2.2 |"
    assert next(line for line in table.splitlines() if line.startswith("| CE")).startswith("| CE | 6 of 8 | 12.0 ± 0.0")
    assert "| DV-MINE | 0 of 8 | – | – | – |" in table


@pytest.mark.e2e
@pytest.mark.usefixtures("ray_session")
def test_miniature_end_to_end_skips_finished_work(tmp_path, monkeypatch, capsys):
    """Table 3's path at toy scale: pretrain, probe, table; again: nothing runs; longer: half-finished."""
    import torch

    from data_prep.__main__ import main as data_prep_main
    from data_prep.jigsaw import permutation_set
    from pretrain.checkpoint import resolve_checkpoint_file

    data = tmp_path / "data"
    assert data_prep_main(["skimage-crops", "--images", "40", "--resize", "292", "--out", str(data / "skimage_crops"),
                           "--workers", "1", "--no-progress"]) == 0
    monkeypatch.setitem(rlist.MINIATURE_STEPS, "table3", 4)
    monkeypatch.setattr(rlist, "MINIATURE_PROBE_EPOCHS", 3)
    monkeypatch.setattr(rlist, "DATA_SECONDS", 0.05)
    args = dict(seeds=1, probe_seeds=2, miniature=True, methods=["eta-mine"])
    table = driver.reproduce("table3", data, tmp_path / "out", **args)
    assert "| η-MINE | 2 of 2 |" in table and (tmp_path / "out" / "table.md").read_text() == table
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    payload = torch.load(resolve_checkpoint_file(run_dir), weights_only=True)
    assert payload["step"] == 4 and payload["permutations_sha256"] == permutation_set(None, 100)[1]
    results = tmp_path / "out" / "probes" / "table3-mini-eta-mine-imagenet10-seed0-on-imagenet10" / "results.json"
    first = json.loads(results.read_text())
    assert first["step"] == 4 and first["seeds"] == [0, 1] and first["checkpoint"] == str(resolve_checkpoint_file(run_dir))
    capsys.readouterr()

    assert driver.reproduce("table3", data, tmp_path / "out", **args) == table  # everything finished: skipped
    out = capsys.readouterr().out
    assert "[skip] table3-mini-eta-mine-imagenet10-seed0: finished" in out and "[pretrain]" not in out and "[probe]" not in out

    monkeypatch.setitem(rlist.MINIATURE_STEPS, "table3", 8)  # now half-finished: it would continue, not restart
    run_list = build_run_list("table3", data, tmp_path / "out", **args)
    assert rrun.pretrain_state(run_list, run_list.runs[0]) == ("partial", run_dir)
    cfg, resumed = rrun.pretrain_config(run_list, run_list.runs[0])  # pretrain's --resume: the saved config
    assert resumed == run_dir and cfg.train.steps == 8
    assert rrun.probe_state(run_list, run_list.probes[0]) == "to run"


def test_the_miniature_builds_a_missing_stand_in_through_the_builder_registry(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from data_prep.manifest import read_manifest
    from data_prep.shard_writer import EncodeOptions

    for i in range(4):
        (tmp_path / "src" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(tmp_path / "src" / f"c{i % 2}" / f"{i}.png")
    tiny = rlist.StandIn("tiny", "folder", {"src": [str(tmp_path / "src")], "name": "tiny"}, EncodeOptions("png"))
    monkeypatch.setitem(rlist.MINIATURE_DATA, "imagenet10", tiny)
    rlist.check_data("table3", tmp_path, miniature=True)
    manifest = read_manifest(tmp_path / "tiny")
    assert manifest["dataset"] == "tiny" and manifest["splits"]["train"]["num_samples"] == 4
    assert "building the miniature's imagenet10 stand-in" in capsys.readouterr().out
    rlist.check_data("table3", tmp_path, miniature=True)  # there now: not built again
    assert capsys.readouterr().out == ""


def test_half_finished_run_continues_from_its_directory(tmp_path):
    """A run directory with a checkpoint short of the run list's steps is resumed (`python -m pretrain
    --resume DIR`), one at the run list's steps is done, none is started afresh."""
    import yaml

    from tests.eval.conftest import make_config, write_checkpoint

    run_list = build_run_list("table3", tmp_path / "data", tmp_path / "out", seeds=1, methods=["ce"])
    run = run_list.runs[0]
    assert rrun.pretrain_state(run_list, run) == ("new", None)
    cfg, resumed = rrun.pretrain_config(run_list, run)
    assert resumed is None and cfg.task.kind == "jigsaw-ce"  # from configs/jigsaw_ce_imagenet10.yaml
    run_dir = run_list.run_root / f"{run.name}-20260101-000000"
    config = make_config("jigsaw-ce", tmp_path / "data", estimator=None, image_size=64)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    write_checkpoint(run_dir, config, step=1000)
    assert rrun.pretrain_state(run_list, run) == ("partial", run_dir)
    cfg, resumed = rrun.pretrain_config(run_list, run)
    assert resumed == run_dir and cfg.model.encoder == "dcgan"  # the saved config.yaml, not the YAML
    rrun.refresh_status(run_list)
    assert run.status == "partial (step 1000 of 2560000)" and run_list.probes[0].status == "to run"
    run.steps = 1000
    assert rrun.pretrain_state(run_list, run) == ("done", run_dir)


def test_cluster_jobs_resume_named_runs_and_probe_their_directory(tmp_path):
    """On a cluster a run is a `cluster.resume` job under its fixed name; its probe an eval.linear job."""
    import shlex

    from cluster.submit import pretrain_job

    run_list = build_run_list("table3", tmp_path / "data", tmp_path / "out", seeds=1, probe_seeds=2, methods=["ce"])
    run = run_list.runs[0]
    entrypoint, name, _ = pretrain_job(rlist.REPO_ROOT / run.config, run.overrides, rlist.REPO_ROOT)
    assert name == "table3-ce-imagenet10-seed0"
    assert shlex.split(entrypoint)[:5] == ["python", "-m", "cluster.resume", "--config", "configs/jigsaw_ce_imagenet10.yaml"]
    assert f"run.root={tmp_path / 'out' / 'runs'}" in shlex.split(entrypoint)
    probe = shlex.split(rrun.probe_entrypoint(run_list, run_list.probes[0], tmp_path / "out" / "runs" / "r-1"))
    assert probe[:3] == ["python", "-m", "eval.linear"]
    assert {f"checkpoint={tmp_path / 'out' / 'runs' / 'r-1'}", "seeds=2", "epochs=200",
            f"out={tmp_path / 'out' / 'probes' / 'table3-ce-imagenet10-seed0-on-imagenet10'}"} <= set(probe[3:])
