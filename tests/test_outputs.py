"""Every command's output (``--out``/``out=``) goes through :mod:`storage`: into a bucket of the local S3
server (fixture ``s3``) where the command can write one, else a one-line refusal; never a local folder
named ``s3:``. ``data_prep``'s shards in a bucket are ``tests/data_prep/test_storage.py``."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

import storage
from tests.eval.conftest import make_config, write_checkpoint
from tests.support.shards import synthetic_shards


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A DCGAN (InfoMax) checkpoint and small labelled shards."""
    root = tmp_path_factory.mktemp("outputs")
    shards = synthetic_shards(root / "shards", 32, {"train": 30, "test": 15}, shard_size=15)
    run = root / "run"
    write_checkpoint(run, make_config("infomax", shards), step=4, seed=1)
    return {"root": root, "shards": shards, "run": run}


def printed_loader(stdout: str) -> str:
    """The Python lines ``pretrain.export`` printed after ``load it with:``."""
    return textwrap.dedent(stdout.split("load it with:\n", 1)[1])


def test_export_writes_to_a_bucket_and_prints_lines_that_load_it(s3, world, tmp_path, monkeypatch, capsys):
    from pretrain.checkpoint import load_encoder
    from pretrain.export import main as export

    monkeypatch.chdir(tmp_path)
    url = s3.bucket("exports") + "/enc/dcgan.safetensors"
    assert export([str(world["run"]), "--out", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {url}: encoder dcgan (depth 2, 8192 features) from step 4")
    assert storage.isfile(url) and list(tmp_path.iterdir()) == []  # nothing local, no ./s3:
    namespace: dict = {}
    exec(printed_loader(out), namespace)  # the lines exactly as printed, reading the bucket
    ours, _ = load_encoder(world["run"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(namespace["encoder"](x), ours(x), rtol=0, atol=0)


def test_export_out_onto_a_directory_under_a_file_or_into_a_missing_bucket_is_one_line(s3, world, tmp_path,
                                                                                      monkeypatch, capsys):
    from pretrain.export import main as export

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.safetensors").mkdir()
    for out, match in ((tmp_path / "dir.safetensors", "is a directory; name a file in it"),
                       (tmp_path / "file" / "e.safetensors", "is a file, not a directory"),
                       (tmp_path / "e.pt", "name the file *.safetensors"),
                       ("s3://no-such-bucket/enc/e.safetensors",
                        "--out folder: s3://no-such-bucket/enc: bucket s3://no-such-bucket does not exist")):
        assert export([str(world["run"]), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and match in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.safetensors", "file"]  # nothing made, no ./s3:


def test_an_export_loaded_into_another_architecture_is_an_error(world, tmp_path, capsys):
    """The printed loader for a timm encoder is strict too: a DCGAN export into a ResNet (whose
    lenient timm loading would leave random weights) or into a DCGAN of another depth is one line."""
    import timm

    from pretrain.export import load_into, main as export
    from pretrain.models import build_encoder

    out = tmp_path / "dcgan.safetensors"
    assert export([str(world["run"]), "--out", str(out)]) == 0
    capsys.readouterr()
    for model in (timm.create_model("resnet18", num_classes=0), build_encoder("dcgan", depth=3)):
        with pytest.raises(ValueError, match=r"holds the encoder dcgan \(depth 2, 8192 features\), which does not "
                                             r"fit this .*; load it with pretrain.export.load_exported") as info:
            load_into(model, out)
        assert "\n" not in str(info.value)


def test_eval_results_and_table_go_to_a_bucket(s3, world, tmp_path, monkeypatch, capsys):
    from eval.linear import main as linear
    from eval.table import main as table

    monkeypatch.chdir(tmp_path)
    bucket = s3.bucket("results")
    probe = [f"checkpoint={world['run']}", f"data={world['shards']}", "epochs=1", "seeds=1", "progress=false"]
    assert linear([*probe, f"out={bucket}/eval"]) == 0, capsys.readouterr().err
    assert json.loads(storage.read_text(f"{bucket}/eval/results.json"))["num_train"] == 30
    assert linear([*probe, f"out={tmp_path / 'local'}"]) == 0
    capsys.readouterr()
    assert table([str(tmp_path / "local"), "--out", f"{bucket}/table.md"]) == 0
    assert storage.read_text(f"{bucket}/table.md") == capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "runs"]  # runs/feature_cache: no ./s3:


@pytest.mark.parametrize("command", ["demo", "reproduce", "mi_gaussian", "mi_gan"])
def test_commands_that_write_local_files_refuse_a_bucket_in_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    url = "s3://bucket/out"
    if command == "demo":
        from demo.__main__ import main

        with pytest.raises(SystemExit):
            main(["--out", url])
    elif command == "reproduce":
        from reproduce.driver import main

        assert main(["table2", "--data-root", str(tmp_path), "--out", url, "--dry-run"]) == 2
    elif command == "mi_gaussian":
        from experiments.mi_gaussian.benchmark import main

        with pytest.raises(SystemExit):
            main(["--quick", "--out", url])
    else:
        from experiments.mi_gan.gan import load_config

        with pytest.raises(ValueError, match="writes local files only"):
            load_config([f"out={url}"])
        assert list(tmp_path.iterdir()) == []
        return
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{url}: this command writes local files only" in err, err
    assert list(tmp_path.iterdir()) == []
