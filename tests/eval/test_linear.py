"""Linear probe: top-k counting, the probe itself, the frozen-encoder check, the feature cache and
checkpoints end to end."""
import json
from pathlib import Path

import pytest
import torch

from storage.files import sha256_file
from data_prep.manifest import read_manifest
from eval.features import cached_features
from eval.linear import main, prepare_features, run_linear_eval, verify_encoder_unchanged
from eval.probe import train_linear_probe
from eval.topk import topk_accuracy, topk_correct
from pretrain.checkpoint import load_checkpoint, load_encoder, resolve_checkpoint_file


def brute_force_topk(scores, labels, k):
    """Count by hand: a sample is right when fewer than k classes score strictly above its label
    (scores are continuous random numbers, so there are no ties)."""
    correct = 0
    for row, y in zip(scores.tolist(), labels.tolist()):
        above = sum(1 for s in row if s > row[y])
        correct += above < k
    return correct


@pytest.mark.parametrize("num_classes", [3, 10, 37])
def test_topk_equals_brute_force_count(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    scores = torch.randn(500, num_classes, generator=g)
    labels = torch.randint(0, num_classes, (500,), generator=g)
    got = topk_correct(scores, labels, (1, 5, 10))
    for k in (1, 5, 10):
        assert got[k] == brute_force_topk(scores, labels, k)
    acc = topk_accuracy(scores, labels, (1, 5))
    assert acc[1] == pytest.approx(100.0 * got[1] / 500)
    if num_classes <= 10:
        assert got[10] == 500  # k >= C: every label is in the top k


def test_topk_rejects_bad_shapes():
    with pytest.raises(ValueError, match="scores"):
        topk_correct(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be"):
        topk_correct(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), (0,))


def _separable(n, num_classes=5, dim=20, seed=0):
    """Points around well-separated class centres: a linear classifier can get every one right."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.eye(num_classes, dim)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return centres[labels] + 0.5 * torch.randn(n, dim, generator=g), labels


def test_probe_separates_separable_features():
    x, y = _separable(600)
    xt, yt = _separable(400, seed=1)
    res = train_linear_probe(x, y, xt, yt, 5, epochs=8, seed=0, lr=5e-2, batch_size=100, progress=False)
    assert res["top1"] >= 99.0
    assert res["top5"] == 100.0


def test_probe_is_at_chance_on_shuffled_labels():
    # Labels from a random linear map of Gaussian features: learnable as they are (>= 85%), but once the
    # train labels are shuffled they carry no information, so test accuracy falls to chance (20%).
    # (Clustered features would not do here: the probe would map each cluster to the label that
    # happens to be most frequent in it after the shuffle, which is right or wrong for a whole cluster.)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(20, 5, generator=g)
    x, xt = torch.randn(1000, 20, generator=g), torch.randn(2000, 20, generator=g)
    y, yt = (x @ w).argmax(1), (xt @ w).argmax(1)
    shuffled = y[torch.randperm(1000, generator=g)]
    kw = dict(epochs=8, seed=0, lr=5e-2, batch_size=100, progress=False)
    assert train_linear_probe(x, y, xt, yt, 5, **kw)["top1"] >= 85.0
    assert 12.0 <= train_linear_probe(x, shuffled, xt, yt, 5, **kw)["top1"] <= 30.0


def test_probe_is_reproducible_per_seed_and_differs_across_seeds():
    x, y = _separable(300)
    xt, yt = _separable(300, seed=1)
    kw = dict(epochs=2, lr=1e-3, batch_size=100, progress=False)
    a = train_linear_probe(x, y, xt, yt, 5, seed=0, **kw)
    b = train_linear_probe(x, y, xt, yt, 5, seed=0, **kw)
    c = train_linear_probe(x, y, xt, yt, 5, seed=1, **kw)
    assert a == b
    assert a["train_loss"] != c["train_loss"]


# ----------------------------------------------------------------------------- checkpoints end to end


def test_encoder_unchanged_check_catches_a_modified_encoder(eval_world):
    encoder, _ = load_encoder(eval_world["infomax_run"])
    reference = load_checkpoint(eval_world["infomax_run"])["encoder"]
    verify_encoder_unchanged(encoder, reference)  # as loaded: passes
    with torch.no_grad():
        encoder.layers[0][0].weight[0, 0, 0, 0] += 1e-6
    with pytest.raises(RuntimeError, match=r"'layers\.0\.0\.weight' changed"):
        verify_encoder_unchanged(encoder, reference)
    encoder, _ = load_encoder(eval_world["infomax_run"])
    encoder.train()  # a forward pass in train mode moves batch-norm running statistics: must be caught too
    with torch.no_grad():
        encoder(torch.randn(2, 3, 32, 32))
    with pytest.raises(RuntimeError, match="running_mean' changed|running_var' changed|num_batches_tracked' changed"):
        verify_encoder_unchanged(encoder, reference)


def test_cached_features_equal_uncached(eval_world, tmp_path):
    encoder, _ = load_encoder(eval_world["jigsaw_run"])
    file = resolve_checkpoint_file(eval_world["jigsaw_run"])
    kw = dict(checkpoint_sha256=sha256_file(file), shard_dir=eval_world["big"], manifest=read_manifest(eval_world["big"]),
              split="train", kind="jigsaw", batch_size=5, num_workers=0, progress=False)
    plain = cached_features(encoder, cache_dir=None, **kw)
    first = cached_features(encoder, cache_dir=tmp_path, **kw)
    second = cached_features(encoder, cache_dir=tmp_path, **kw)
    assert not plain["cache_hit"] and not first["cache_hit"] and second["cache_hit"]
    assert plain["features"].shape == (12, encoder.feature_dim)  # mean of the 9 patch features
    for got in (first, second):
        assert torch.equal(got["features"], plain["features"])
        assert torch.equal(got["labels"], plain["labels"])
        assert got["keys"] == plain["keys"]
    # the cache is keyed by checkpoint: another checkpoint's features are a miss, never a stale hit
    other = cached_features(encoder, cache_dir=tmp_path, **{**kw, "checkpoint_sha256": "0" * 64})
    assert not other["cache_hit"]
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_checkpoint_loads_and_evaluates(eval_world, tmp_path):
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    res = run_linear_eval(eval_world["infomax_run"], eval_world["small"], epochs=15, seeds=2, out=out, lr=1e-2,
                          batch_size=16, cache_dir=cache, progress=False)
    assert res["step"] == 6  # a run directory means its latest checkpoint
    assert res["checkpoint_name"] == "infomax-eta-step6"
    assert (res["num_train"], res["num_test"], res["num_classes"], res["feature_dim"]) == (60, 30, 3, 8192)
    assert res["pretraining"]["estimator"] == "eta-mine" and res["pretraining"]["dataset"] == "synthetic"
    assert res["seeds"] == [0, 1] and len(res["per_seed"]) == 2
    # colour-coded classes: features and labels must have stayed aligned for this to be far above 33%
    assert res["top1"]["mean"] >= 90.0 and res["knn"]["top1"] >= 90.0
    assert res["top10"]["mean"] == 100.0  # 3 classes
    saved = json.loads((out / "results.json").read_text())
    assert saved["top1"] == res["top1"] and saved["encoder_unchanged"] is True
    assert "| top-1 |" in (out / "results.md").read_text()
    assert list((out / "tb" / "seed0").glob("events.out.tfevents.*")) and list((out / "tb" / "seed1").glob("events.out.tfevents.*"))
    # a second run reads the cache and gives the same numbers
    again = run_linear_eval(eval_world["infomax_run"], eval_world["small"], epochs=15, seeds=2, out=tmp_path / "again",
                            lr=1e-2, batch_size=16, cache_dir=cache, progress=False)
    assert again["feature_cache"]["hit"] and not res["feature_cache"]["hit"]
    assert again["top1"] == res["top1"] and again["knn"] == res["knn"]


def test_jigsaw_checkpoint_and_random_init_baseline(eval_world, tmp_path):
    feats = prepare_features(eval_world["jigsaw_run"], eval_world["big"], cache_dir=None, batch_size=6, progress=False)
    assert feats["meta"]["kind"] == "jigsaw" and feats["train"][0].shape == (12, 8192 * 4)
    rand = prepare_features(eval_world["jigsaw_run"], eval_world["big"], cache_dir=None, batch_size=6, progress=False, random_init=True)
    assert rand["meta"]["checkpoint_name"].endswith("-random-init")
    assert not torch.equal(rand["train"][0], feats["train"][0])


def test_bad_checkpoints_give_one_clear_line(eval_world, tmp_path, capsys):
    data = str(eval_world["small"])
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        prepare_features(bad, data, cache_dir=None, progress=False)
    # weights of depth 2 under a config that says depth 3: another architecture
    payload = load_checkpoint(eval_world["infomax_run"])
    payload.pop("path")
    payload["config"]["model"]["depth"] = 3
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="do not fit model.encoder"):
        prepare_features(tmp_path / "mismatch.pt", data, cache_dir=None, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_features(tmp_path / "nowhere", data, cache_dir=None, progress=False)
    for args in ([f"checkpoint={bad}"], [f"checkpoint={tmp_path / 'nowhere'}"],
                 [f"checkpoint={eval_world['infomax_run']}", "test_split=val"]):
        assert main([*args, f"data={data}", "epochs=1", "cache_dir=null", f"out={tmp_path / 'o'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["checkpoint=r", "data=d", "epoch=3"], "epoch"),  # unknown key: named
    (["checkpoint=r", "data=d", "epochs=three"], "epochs"),  # wrong type: named
    (["data=d"], "checkpoint is required"),
    (["checkpoint=r"], "data is required"),
    (["--checkpoint", "r", "data=d"], "unknown option --checkpoint: settings are key=value"),
    (["checkpoint=r", "data=d", "epochs"], "not key=value"),
    (["checkpoint=r", "data=d", "num_workers=-1"], "num_workers must be >= 0 or null"),
    (["checkpoint=r", "data=d", "extract_batch_size=0"], "extract_batch_size must be >= 1 or null"),
])
def test_settings_errors_are_one_line_naming_the_key(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_settings_defaults_yaml_and_overrides(tmp_path, capsys):
    from eval.config import LinearConfig, load_linear_config

    cfg = load_linear_config(None, ["checkpoint=[runs/a,runs/b]", "data=data/shards/cifar10", "cache_dir=null"])
    assert cfg.checkpoint == ["runs/a", "runs/b"] and cfg.cache_dir is None and cfg.epochs == LinearConfig.epochs
    (tmp_path / "eval.yaml").write_text("checkpoint: runs/a\ndata: d\nepochs: 7\nseeds: 3\n")
    cfg = load_linear_config(tmp_path / "eval.yaml", ["seeds=1"])
    assert (cfg.checkpoint, cfg.epochs, cfg.seeds, cfg.lr) == (["runs/a"], 7, 1, LinearConfig.lr)
    # --help shows the dataclass defaults, each key once
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    for name, value in (("epochs", "200"), ("seeds", "2"), ("lr", "0.0001"), ("cache_dir", "runs/feature_cache"),
                        ("checkpoint", "(required)"), ("random_init", "false"), ("out", "null")):
        assert f"  {name}={value} " in shown, name


def test_extraction_settings_follow_the_device_unless_given(eval_world, monkeypatch):
    """Left null, extraction takes the device's batch and loader processes (a GPU would wait on one
    process decoding 64 images at a time); given, they are used as they are, on either device."""
    import data_prep.eval_stream
    from eval.config import EXTRACTION_DEFAULTS, LinearConfig, extraction_settings

    assert LinearConfig.extract_batch_size is None and LinearConfig.num_workers is None
    cpu, gpu = EXTRACTION_DEFAULTS["cpu"], EXTRACTION_DEFAULTS["cuda"]
    assert extraction_settings(None, None, on_gpu=False) == (cpu["batch_size"], cpu["num_workers"]) == (64, 0)
    assert extraction_settings(None, None, on_gpu=True) == (gpu["batch_size"], gpu["num_workers"]) == (256, 4)
    assert extraction_settings(8, 0, on_gpu=True) == (8, 0) and extraction_settings(None, 2, on_gpu=False) == (64, 2)
    seen, real = [], data_prep.eval_stream.eval_loader
    monkeypatch.setattr(data_prep.eval_stream, "eval_loader", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    prepare_features(eval_world["infomax_run"], eval_world["big"], cache_dir=None, device="cpu", progress=False)
    assert [(kw["batch_size"], kw["num_workers"], kw["pin_memory"]) for kw in seen] == [(64, 0, False)] * 2
    seen.clear()
    prepare_features(eval_world["infomax_run"], eval_world["big"], cache_dir=None, device="cpu", progress=False,
                     batch_size=7, num_workers=1)
    assert [(kw["batch_size"], kw["num_workers"], kw["pin_memory"]) for kw in seen] == [(7, 1, False)] * 2


@pytest.mark.e2e
@pytest.mark.ray
def test_two_worker_pretraining_checkpoints_evaluate_on_ray_as_in_process(tmp_path, ray_session, digits_shards,
                                                                          infomax_reference):
    """Two checkpoints of a real 2-worker Ray Train run (InfoMax, η-MINE, DCGAN: the session's reference
    run on digits, tests/conftest.py) both evaluate on its shards, their seeds as parallel Ray tasks, with
    exactly the numbers of the in-process evaluation."""
    from eval.linear import evaluate_checkpoints

    run_dir = infomax_reference
    checkpoints = [run_dir / "checkpoint_000000004", run_dir]  # the run directory means its latest: step 12
    kw = dict(epochs=4, seeds=2, lr=1e-2, batch_size=16, cache_dir=None, progress=False)
    remote = evaluate_checkpoints(checkpoints, digits_shards, out=tmp_path / "ray", **kw)  # Ray is up: used
    local = evaluate_checkpoints(checkpoints, digits_shards, out=tmp_path / "local", use_ray=False, **kw)
    assert [r["step"] for r in remote] == [4, 12]
    assert remote[1]["checkpoint_name"] == f"{run_dir.name}-step12"
    assert remote[1]["pretraining"] == {**remote[1]["pretraining"], "task": "infomax", "estimator": "eta-mine",
                                        "encoder": "dcgan", "dataset": "sklearn-digits"}
    for a, b in zip(local, remote):
        assert a["per_seed"] == b["per_seed"] and a["knn"] == b["knn"] and a["encoder_unchanged"]
        saved = json.loads((Path(b["out"]) / "results.json").read_text())
        assert Path(b["out"]).parent == tmp_path / "ray" and saved["top1"] == b["top1"]
        assert list((Path(b["out"]) / "tb" / "seed1").glob("events.out.tfevents.*"))
    assert local[0]["per_seed"] != local[1]["per_seed"]  # two different checkpoints really were evaluated


def test_default_splits_pick_test_or_val_and_refuse_unlabelled():
    from eval.linear import default_splits

    def manifest(**splits):
        return {"dataset": "x", "class_names": ["a", "b"], "splits": {k: {"labelled": v} for k, v in splits.items()}}

    assert default_splits(manifest(train=True, test=True), None, None) == ("train", "test")
    assert default_splits(manifest(train=True, val=True), None, None) == ("train", "val")  # ImageNet-10%
    with pytest.raises(ValueError, match="no labels"):
        default_splits(manifest(train=True, test=True, unlabeled=False), "unlabeled", None)
    with pytest.raises(ValueError, match="no test split 'holdout'; available: train, test"):
        default_splits(manifest(train=True, test=True), None, "holdout")


def test_progress_lines_when_logged_and_probe_curves_beside_the_run(eval_world, tmp_path, capsys):
    """Piped or logged (not a terminal): readable progress lines, not carriage-return redraws. A
    checkpoint inside a run directory gets the probe's result in that run's TensorBoard; each curve is
    written once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from .conftest import make_config, write_checkpoint

    run = tmp_path / "run"
    write_checkpoint(run, make_config("infomax", eval_world["small"]), step=9, seed=4)
    (run / "config.yaml").write_text("run: {name: test}\n")  # what makes a directory a run directory
    res = run_linear_eval(run, eval_world["small"], epochs=3, seeds=1, out=tmp_path / "out", lr=1e-2,
                          batch_size=16, cache_dir=None, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith("features train") and "60/60" in line for line in lines), err
    assert any(line.startswith("probe seed 0") and "3/3" in line for line in lines), err

    assert res["run_dir"] == str(run) and res["run_tensorboard"] == str(run / "tb" / "probe-synthetic")
    summary = EventAccumulator(res["run_tensorboard"]).Reload()
    (top1,) = summary.Scalars("probe/top1")
    assert top1.step == 9 and top1.value == pytest.approx(res["top1"]["mean"])
    # each per-epoch curve is in TensorBoard once: in the results directory, not again beside the run
    curves = EventAccumulator(str(tmp_path / "out" / "tb" / "seed0")).Reload()
    assert [e.step for e in curves.Scalars("probe/test_top1")] == [1, 2, 3]
    event_dirs = {f.parent for f in tmp_path.rglob("events.out.tfevents.*")}
    assert event_dirs == {tmp_path / "out" / "tb" / "seed0", run / "tb" / "probe-synthetic"}
    # a checkpoint outside a run directory (eval_world's have no config.yaml) leaves nothing behind
    assert not (eval_world["infomax_run"] / "tb").exists()


def test_extraction_runs_in_full_fp32_and_restores_the_settings(eval_world):
    """cuDNN's TF32 default (on GPUs that have it) is off while features are extracted, then restored."""
    from eval.features import extract_features

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return x.flatten(1)[:, :4]

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    batch = {"images": torch.zeros(2, 3, 32, 32), "label": torch.tensor([0, 1]), "key": ["a", "b"]}
    out = extract_features(Spy(), [batch], "infomax", progress=False)
    assert out["features"].shape == (2, 4) and seen == [(False, False)]
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_the_ray_extraction_task_reserves_what_it_runs_and_fits_a_node():
    from eval.linear import extraction_task

    kw = {"batch_size": None, "num_workers": None, "device": None, "cache_dir": None}

    def node(cpus, gpus=0, alive=True):
        return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}

    assert extraction_task(kw, [node(2)]) == ({**kw, "batch_size": 64, "num_workers": 0}, {"num_cpus": 1, "num_gpus": 0})
    assert extraction_task(kw, [node(2), node(32, 8)]) == ({**kw, "batch_size": 256, "num_workers": 4},
                                                           {"num_cpus": 5, "num_gpus": 1})
    # a GPU node of 3 CPUs holds the task with 2 loader processes; 4 would never be scheduled
    assert extraction_task(kw, [node(64), node(3, 1)])[1] == {"num_cpus": 3, "num_gpus": 1}
    assert extraction_task(kw, [node(3, 1, alive=False), node(2)])[1] == {"num_cpus": 1, "num_gpus": 0}
    # given settings are kept; device=cpu takes no GPU
    assert extraction_task({**kw, "num_workers": 6, "batch_size": 32}, [node(3, 1)]) == (
        {**kw, "num_workers": 6, "batch_size": 32}, {"num_cpus": 7, "num_gpus": 1})
    assert extraction_task({**kw, "device": "cpu"}, [node(32, 8)])[1] == {"num_cpus": 1, "num_gpus": 0}


def test_a_probe_too_large_for_memory_is_one_line_before_extraction(eval_world, tmp_path, capsys):
    """10^6 classes: the probe (weights, gradient, Adam's moments) and its test logits need far more
    than the machine has; eval.linear says so in one line instead of allocating, and extracts nothing."""
    import shutil

    import psutil

    from eval.probe import check_probe_memory, probe_memory_bytes

    on_device, on_host = probe_memory_bytes(2048, 10**6, 10_000)
    assert round(on_device / 1e9) == 33  # the ResNet50 case
    with pytest.raises(MemoryError, match=r"1,000,000 classes on 2,048-d features needs .* GB on the host"):
        check_probe_memory(2048, 10**6, 10_000, "cpu")
    check_probe_memory(2048, 1000, 10_000, "cpu")  # ImageNet's 1000 classes fit

    data = tmp_path / "many_classes"
    shutil.copytree(eval_world["small"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["class_names"] = [f"c{i}" for i in range(10**6)]
    (data / "manifest.json").write_text(json.dumps(manifest))
    feature_dim = 8192  # the eval_world DCGAN's (depth 2 on 32×32)
    assert sum(probe_memory_bytes(feature_dim, 10**6, 30)) > psutil.virtual_memory().available
    cache = tmp_path / "cache"
    assert main([f"checkpoint={eval_world['infomax_run']}", f"data={data}", f"out={tmp_path / 'out'}", f"cache_dir={cache}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: a linear probe of 1,000,000 classes") and len(err.splitlines()) == 1, err
    assert not cache.exists() or not any(cache.iterdir())  # stopped before extracting
