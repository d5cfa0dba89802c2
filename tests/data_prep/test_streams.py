"""The jigsaw, InfoMax and evaluation streams on small shard sets."""
from __future__ import annotations

import io
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep import jigsaw
from data_prep.__main__ import main
from data_prep.eval_stream import eval_loader
from data_prep.image_io import decode_resized
from data_prep.infomax_stream import infomax_loader
from data_prep.jigsaw_stream import jigsaw_loader
from data_prep.shard_stream import CorruptSampleWarning

N_IMAGES = 40


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 PNG images, one class each (label = identity), 8 shards of 5."""
    root = tmp_path_factory.mktemp("streams")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        (root / "src" / f"c{i:02d}").mkdir(parents=True)
        h, w = rng.integers(60, 120, size=2)
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "src" / f"c{i:02d}" / "im.png")
    out = root / "shards"
    assert main(["folder", "--src", str(root / "src"), "--out", str(out), "--shard-size", "5", "--format", "png",
                 "--workers", "1", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def perms():
    return jigsaw.max_hamming_permutations(100, seed=0)


def labels_of(batches) -> list[int]:
    out = []
    for b in batches:
        lab = b["label"]
        if "image_index" in b:  # one label per image, not per puzzle
            lab = lab[b["perm_slot"] == 0]
        out.extend(lab.tolist())
    return out


def test_jigsaw_batch_matches_the_images(shards, perms):
    loader = jigsaw_loader(shards, permutations=perms, images_per_batch=4, perms_per_image=3, train=False,
                           resampled=False, batches_per_epoch=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    b = batches[0]
    assert b["patches"].shape == (12, 9, 3, 64, 64)
    # train=False: no shuffle, shard order; centred tiles of the 292² squashed image, scrambled
    tars = sorted(shards.glob("train-*.tar"))
    with tarfile.open(tars[0]) as tar:
        pngs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")]
    for r in range(12):
        i = b["image_index"][r].item()
        tiles = jigsaw.tile_crops(decode_resized(pngs[i], 292), None)
        expected = jigsaw.standardise(tiles)[torch.as_tensor(perms[b["perm_index"][r].item()])]
        torch.testing.assert_close(b["patches"][r], expected)
    assert b["label"][b["perm_slot"] == 0].tolist() == [0, 1, 2, 3]


def test_two_ranks_two_workers_equal_counts_no_duplicates(shards, perms):
    per_rank = []
    for rank in range(2):
        loader = jigsaw_loader(shards, permutations=perms, images_per_batch=2, perms_per_image=2, rank=rank,
                               world_size=2, num_workers=2, resampled=False, seed=3, shuffle_buffer=10)
        per_rank.append(list(loader))
    assert len(per_rank[0]) == len(per_rank[1]) == 10  # 40 images / (2 ranks × 2 per batch)
    seen = labels_of(per_rank[0]) + labels_of(per_rank[1])
    assert sorted(seen) == list(range(N_IMAGES))  # each image exactly once in the epoch
    # resampled: any batch count, still equal per rank, duplicates allowed
    counts = [len(list(jigsaw_loader(shards, permutations=perms, images_per_batch=2, perms_per_image=2,
                                     rank=r, world_size=2, num_workers=2, batches_per_epoch=7))) for r in range(2)]
    assert counts == [7, 7]


def test_rank_from_environment(shards, perms, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    loader = jigsaw_loader(shards, permutations=perms, images_per_batch=2, perms_per_image=2)
    assert (loader.stream.rank, loader.stream.world_size) == (1, 4)
    assert len(loader) == N_IMAGES // (4 * 2)


def test_same_seed_same_data_resume_and_new_epoch(shards):
    kw = dict(batch_size=4, num_workers=2, seed=7, batches_per_epoch=7, shuffle_buffer=20)
    full = list(infomax_loader(shards, **kw))
    again = list(infomax_loader(shards, **kw))
    resumed = infomax_loader(shards, skip_batches=3, **kw)
    assert len(resumed) == 4
    tail = list(resumed)
    for a, b in zip(full, again):
        torch.testing.assert_close(a["images"], b["images"])
    for a, b in zip(full[3:], tail):
        torch.testing.assert_close(a["images"], b["images"])
        assert a["label"].tolist() == b["label"].tolist()
    other = list(infomax_loader(shards, epoch=1, **kw))
    assert labels_of(other) != labels_of(full)
    assert full[0]["images"].shape == (4, 3, 32, 32) and full[0]["images"].dtype == torch.float32
    assert full[0]["images"].min() >= -1 and full[0]["images"].max() <= 1


def test_endless_stream_runs_the_epochs_of_separate_loaders_in_one(shards):
    """One iteration over epochs in the same 2 workers (7 batches an epoch: odd, so the worker that
    deals the next epoch's first batch changes) equals one loader per epoch, from a mid-epoch resume."""
    import itertools

    kw = dict(batch_size=4, num_workers=2, seed=7, batches_per_epoch=7, shuffle_buffer=20)
    separate = [*infomax_loader(shards, epoch=2, skip_batches=3, **kw), *infomax_loader(shards, epoch=3, **kw),
                *infomax_loader(shards, epoch=4, **kw)]
    endless = list(itertools.islice(infomax_loader(shards, epoch=2, skip_batches=3, endless=True, **kw),
                                    len(separate)))
    assert len(separate) == 4 + 7 + 7
    for a, b in zip(separate, endless):
        torch.testing.assert_close(a["images"], b["images"], rtol=0, atol=0)
        assert a["label"].tolist() == b["label"].tolist()


def test_corrupt_sample_skipped_with_warning(tmp_path, shards, perms):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in shards.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    target = bad / "train-000000.tar"
    with tarfile.open(shards / "train-000000.tar") as src, tarfile.open(target, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.startswith("c01/") and m.name.endswith(".png"):
                data = data[:50]  # truncated image
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(jigsaw_loader(bad, permutations=perms, images_per_batch=2, perms_per_image=2,
                                     train=False, resampled=False, batches_per_epoch=3))
    assert len(batches) == 3
    assert labels_of(batches) == [0, 2, 3, 4, 5, 6]
    assert any(issubclass(w.category, CorruptSampleWarning) and "c01/im" in str(w.message) for w in caught)


def test_eval_stream_ordered_exactly_once(shards):
    out0 = list(eval_loader(shards, "train", kind="jigsaw", batch_size=6))
    out2 = list(eval_loader(shards, "train", kind="jigsaw", batch_size=6, num_workers=2))
    keys = [k for b in out0 for k in b["key"]]
    assert keys == [f"c{i:02d}/im" for i in range(N_IMAGES)] == [k for b in out2 for k in b["key"]]
    assert [b["label"].tolist() for b in out0] == [b["label"].tolist() for b in out2]
    torch.testing.assert_close(torch.cat([b["patches"] for b in out0]), torch.cat([b["patches"] for b in out2]))
    p = out0[0]["patches"]
    assert p.shape == (6, 9, 3, 64, 64)
    assert p.mean((-2, -1)).abs().max() < 1e-4 and ((p.std((-2, -1), unbiased=False) - 1).abs().max() < 1e-3)
    small = next(iter(eval_loader(shards, "train", kind="infomax", batch_size=5)))
    assert small["images"].shape == (5, 3, 32, 32) and small["label"].tolist() == [0, 1, 2, 3, 4]
    train_mode_off = next(iter(infomax_loader(shards, batch_size=5, train=False, resampled=False, world_size=1, rank=0)))
    torch.testing.assert_close(small["images"], train_mode_off["images"])


def test_bad_arguments_fail_clearly(tmp_path, shards, perms):
    from data_prep.manifest import ManifestError
    with pytest.raises(ManifestError, match="no manifest.json"):
        jigsaw_loader(tmp_path, permutations=perms)
    with pytest.raises(ManifestError, match="split 'val' not in"):
        jigsaw_loader(shards, "val", permutations=perms)
    with pytest.raises(ValueError, match="own when resampled=False"):
        jigsaw_loader(shards, permutations=perms, resampled=False, rank=0, world_size=4, num_workers=4)
    with pytest.raises(ValueError, match=r"\[n, 9\]"):
        jigsaw_loader(shards, permutations=np.zeros((5, 4)))
