"""eval.linear on damaged shards and unwritable directories: named, never served stale, one line."""
from __future__ import annotations

import io
import json
import shutil
import tarfile

from eval.linear import main


def copy_shards(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".build"))
    return dst


def garble_first_image(shard):
    """Zero the bytes of the shard's first image (same size: the tar stays valid, the PNG does not decode)."""
    out = io.BytesIO()
    with tarfile.open(shard) as src, tarfile.open(fileobj=out, mode="w") as dst:
        done = False
        for m in src.getmembers():
            blob = src.extractfile(m).read()
            if m.name.endswith(".png") and not done:
                blob, done = bytes(len(blob)), True
            dst.addfile(m, io.BytesIO(blob))
    shard.write_bytes(out.getvalue())


def run(capsys, **settings):
    rc = main(["epochs=2", "seeds=1", "progress=false", *(f"{k}={v}" for k, v in settings.items())])
    return rc, capsys.readouterr().err


def test_damaged_copy_is_named_and_its_features_are_never_served_for_intact_shards(eval_world, tmp_path, capsys):
    damaged = copy_shards(eval_world["small"], tmp_path / "damaged")
    garble_first_image(damaged / "train-000000.tar")
    cut = damaged / "train-000002.tar"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a truncated shard
    cache, ckpt = tmp_path / "cache", eval_world["infomax_run"]

    rc, err = run(capsys, checkpoint=ckpt, data=damaged, out=tmp_path / "a", cache_dir=cache)
    assert rc == 0, err
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    skipped = res["skipped"]["train"]
    assert skipped["samples"] == ["train-000000.tar:train_0000"]
    assert [s["shard"].rsplit("/", 1)[-1] for s in skipped["shards"]] == ["train-000002.tar"]
    assert res["num_train"] < 60 and res["skipped"]["test"] == {"samples": [], "shards": []}
    assert not res["feature_cache"]["hit"]

    # the intact shards (same manifest) must be read afresh, not served the damaged pass
    rc, err = run(capsys, checkpoint=ckpt, data=eval_world["small"], out=tmp_path / "b", cache_dir=cache)
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert rc == 0 and res["num_train"] == 60 and not res["feature_cache"]["hit"]
    assert res["skipped"]["train"] == {"samples": [], "shards": []}
    rc, err = run(capsys, checkpoint=ckpt, data=eval_world["small"], out=tmp_path / "c", cache_dir=cache)
    assert json.loads((tmp_path / "c" / "results.json").read_text())["feature_cache"]["hit"]


def test_unwritable_out_is_one_line_before_extraction(eval_world, tmp_path, capsys):
    """Paths under a regular file cannot be created, for root too (tests run as root)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = tmp_path / "cache"
    rc, err = run(capsys, checkpoint=eval_world["infomax_run"], data=eval_world["small"], out=blocker / "out", cache_dir=cache)
    assert rc == 2 and err.strip().count("\n") == 0 and "out " in err and "is a file" in err
    assert not cache.exists()  # nothing was extracted

    rc, err = run(capsys, checkpoint=eval_world["infomax_run"], data=eval_world["small"], out=tmp_path / "ok",
                  cache_dir=blocker / "cache")
    assert rc == 0 and "warning: cache_dir" in err and "without the feature cache" in err
    assert json.loads((tmp_path / "ok" / "results.json").read_text())["feature_cache"]["train"] is None
