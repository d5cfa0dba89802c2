"""``data.decode_on=device``: the workers ship JPEG bytes and crop corners; the training device decodes
them in one batch and crops. On a CPU the path runs with torchvision's CPU decoder and gives the host
path's batches exactly (292×292 JPEG shards: no resize on either side)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep import jigsaw
from data_prep.__main__ import main as data_prep_main
from data_prep.jigsaw_stream import jigsaw_loader
from pretrain.train import to_device


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory):
    """12 smooth 292×292 photos-alike as JPEG shards of 4, two of them gray."""
    root = tmp_path_factory.mktemp("decode")
    rng = np.random.default_rng(0)
    for i in range(12):
        (root / "src" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        base = np.cumsum(rng.integers(0, 9, (292, 292, 3)), axis=0) % 256  # gradients: JPEG-like content
        Image.fromarray(base.astype(np.uint8)).save(root / "src" / f"c{i % 3}" / f"{i}.png")
    out = root / "shards"
    assert data_prep_main(["folder", "--src", str(root / "src"), "--out", str(out), "--shard-size", "4",
                           "--format", "jpg", "--workers", "1", "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("train", [True, False])
def test_device_decode_gives_the_host_batches(jpeg_shards, train):
    perms = jigsaw.max_hamming_permutations(10, seed=0)
    common = dict(permutations=perms, images_per_batch=3, perms_per_image=4, train=train, seed=5,
                  batches_per_epoch=3, device_augment=True)
    host = list(jigsaw_loader(jpeg_shards, **common))
    shipped = list(jigsaw_loader(jpeg_shards, **common, device_decode=True))
    assert len(host) == len(shipped) == 3
    for h, s in zip(host, shipped):
        assert "tiles_u8" not in s and len(s["jpeg"]) == 3 and s["corners"].shape == (3, 9, 2)
        assert all(d.dtype == torch.uint8 and bytes(d[:2].tolist()) == b"\xff\xd8" for d in s["jpeg"])
        decoded = to_device(s, torch.device("cpu"))  # what the training loop does with the batch
        assert decoded.keys() == h.keys()
        for key in h:
            assert torch.equal(decoded[key], h[key]), key
    assert any(b["gray"].any() for b in host) == train


def test_decode_on_device_is_refused_where_it_does_not_apply(jpeg_shards, tmp_path):
    from pretrain.config import ConfigError, load_config, validate
    from tests.support.shards import folder_shards

    base = ["task.kind=jigsaw-ce", "model.encoder=dcgan", "model.depth=2", "model.kwargs.image_size=64",
            "data.images_per_batch=2", "data.perms_per_image=2", "data.num_permutations=10", "data.decode_on=device"]
    with pytest.raises(ConfigError, match="data.decode_on=device needs data.augment_on=device"):
        validate(load_config(None, [f"data.shards={jpeg_shards}", *base]))
    validate(load_config(None, [f"data.shards={jpeg_shards}", *base, "data.augment_on=device"]))
    png = folder_shards(tmp_path, 4, 2, 32, 4)
    with pytest.raises(ConfigError, match="decodes JPEG and .* holds png"):
        validate(load_config(None, [f"data.shards={png}", *base, "data.augment_on=device"]))


def test_a_training_step_takes_a_device_decode_batch(jpeg_shards):
    from pretrain.train import build_optimizers, build_task_from_config, permutations_of, train_step
    from tests.support.run_states import tiny_cfg

    cfg = tiny_cfg("jigsaw-mi", "eta-mine", "data.augment_on=device", "data.decode_on=device")
    perms = permutations_of(cfg)
    task = build_task_from_config(cfg, perms)
    main_opt, eta_opt = build_optimizers(cfg, task)
    (host_batch,) = list(jigsaw_loader(jpeg_shards, permutations=perms.numpy(), images_per_batch=2, perms_per_image=4,
                                       batches_per_epoch=1, device_augment=True, device_decode=True))
    out = train_step(task, task, to_device(task.host_prepare(host_batch), torch.device("cpu")), 0, main_opt, eta_opt)
    assert out["flags"].read().nonfinite is None
