"""eval.linear on shard directories that are data, not instructions: a manifest whose dataset name would
put the feature cache, the results or the probe curves outside their folders, and a bad label."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
import warnings

import pytest

from data_prep.shard_stream import CorruptSampleWarning
from eval.linear import main


def files_under(root) -> set:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("dataset", ["../../../escaped", "ABSOLUTE"])
def test_a_dataset_name_that_leaves_its_folder_is_refused_before_anything_is_written(eval_world, tmp_path, capsys,
                                                                                    monkeypatch, dataset):
    """The name would join the feature cache (``cache_dir/<dataset>-...``), the default ``out``
    (``runs/eval/<checkpoint>-<dataset>``) and the probe curves (``<run dir>/tb/probe-<dataset>``)."""
    if dataset == "ABSOLUTE":
        dataset = str(tmp_path / "absolute")
    data = tmp_path / "data"
    shutil.copytree(eval_world["small"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["dataset"] = dataset
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "a" / "b" / "run"  # a run directory (config.yaml beside the checkpoints): curves go there
    shutil.copytree(eval_world["infomax_run"], run)
    (run / "config.yaml").write_text("run:\n  seed: 0\n")
    cwd = tmp_path / "a" / "b" / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = files_under(tmp_path)

    for out in ([], [f"out={cwd / 'out'}"]):
        rc = main([f"checkpoint={run}", f"data={data}", f"cache_dir={cwd / 'cache'}", "epochs=1", "seeds=1",
                   "progress=false", *out])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and f"dataset is {dataset!r}, not a plain name" in err, err
    assert files_under(tmp_path) == before
    assert not list(tmp_path.glob("**/*escaped*")) and not (tmp_path / "absolute").exists()


def with_bad_label(shard, key: str) -> None:
    """Rewrite ``shard`` with the ``.cls`` of sample ``key`` replaced by text that is not a number."""
    out = io.BytesIO()
    with tarfile.open(shard) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            blob = src.extractfile(m).read()
            if m.name == f"{key}.cls":
                blob = b"abc"
                m.size = len(blob)
            dst.addfile(m, io.BytesIO(blob))
    shard.write_bytes(out.getvalue())


def test_a_bad_label_skips_its_sample_and_names_it(eval_world, tmp_path, capsys):
    """As training does: the sample is left out, named with its shard; the evaluation goes on."""
    data = tmp_path / "data"
    shutil.copytree(eval_world["small"], data)
    with_bad_label(data / "train-000001.tar", "train_0021")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main([f"checkpoint={eval_world['infomax_run']}", f"data={data}", f"out={tmp_path / 'out'}",
                   "epochs=1", "seeds=1", "progress=false"])
    assert rc == 0, capsys.readouterr().err
    named = [str(w.message) for w in caught if issubclass(w.category, CorruptSampleWarning)]
    assert any("'train_0021'" in m and "train-000001.tar" in m and "'abc'" in m for m in named), named
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["skipped"]["train"]["samples"] == ["train-000001.tar:train_0021"] and res["num_train"] == 59
