"""``pretrain.export``: the encoder alone in a safetensors file that plain timm and torchvision load,
giving the features the project's own encoder gives."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision

from pretrain.checkpoint import load_encoder
from pretrain.export import load_exported, main, read_metadata

from ..eval.conftest import make_config, write_checkpoint


def resnet50_config(tmp_path):
    cfg = make_config("jigsaw-ce", tmp_path / "unused-shards", estimator=None)
    cfg["model"] = {"encoder": "resnet50", "depth": None, "kwargs": {}}
    return cfg


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    run = tmp / "run"
    write_checkpoint(run, resnet50_config(tmp), step=7, seed=3)
    return run


def test_timm_and_torchvision_load_the_export_with_equal_features(resnet_run, tmp_path, capsys):
    out = tmp_path / "encoder.safetensors"
    assert main([str(resnet_run), "--out", str(out)]) == 0
    assert "resnet50 (2048 features) from step 7" in capsys.readouterr().out
    ours, _ = load_encoder(resnet_run)

    # exactly what a user writes (a local file: no hub access is needed or made)
    by_timm = timm.create_model("resnet50", pretrained=True, num_classes=0,
                                pretrained_cfg_overlay=dict(file=str(out))).eval()
    from safetensors.torch import load_file

    by_tv = torchvision.models.resnet50()
    missing, unexpected = by_tv.load_state_dict(load_file(str(out)), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    by_tv.fc = torch.nn.Identity()
    by_tv.eval()

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours(x)
        assert want.shape == (2, 2048)
        torch.testing.assert_close(by_timm(x), want, rtol=0, atol=0)
        torch.testing.assert_close(by_tv(x), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(load_exported(out)(x), want, rtol=0, atol=0)
    # the running statistics travelled too (they were moved off their defaults)
    assert torch.equal(by_timm.bn1.running_mean, ours.bn1.running_mean)


def test_dcgan_export_loads_with_the_documented_loader(tmp_path):
    run = tmp_path / "run"
    write_checkpoint(run, make_config("infomax", tmp_path / "unused"), step=4, seed=1)
    out = tmp_path / "dcgan.safetensors"
    assert main([str(run), "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert json.loads(meta["model"])["encoder"] == "dcgan" and meta["step"] == "4"
    ours, _ = load_encoder(run)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out)(x), ours(x), rtol=0, atol=0)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "e.safetensors")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a")
    with pytest.raises(ValueError, match="cannot read .* as safetensors"):
        load_exported(truncated)
    with pytest.raises(ValueError, match=r"\*\.safetensors"):
        from pretrain.export import export_encoder

        export_encoder(tmp_path, tmp_path / "encoder.pt")
