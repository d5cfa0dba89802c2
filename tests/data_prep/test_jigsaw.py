"""Permutation set and puzzle geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep import jigsaw


@pytest.fixture(scope="module")
def perms():
    return jigsaw.max_hamming_permutations(100, seed=0)


def test_permutation_set_is_distinct_and_far_apart(perms, capsys):
    assert perms.shape == (100, 9) and perms.dtype == np.int64
    assert (np.sort(perms, 1) == np.arange(9)).all()
    assert len({tuple(p) for p in perms}) == 100
    assert (jigsaw.max_hamming_permutations(100, seed=0) == perms).all()
    assert not (jigsaw.max_hamming_permutations(100, seed=1) == perms).all()
    greedy = jigsaw.hamming_stats(perms)
    maximin = jigsaw.hamming_stats(jigsaw.max_hamming_permutations(100, seed=0, criterion="min"))
    randoms = [jigsaw.hamming_stats(np.array([np.random.default_rng([s, i]).permutation(9) for i in range(100)]))
               for s in range(5)]
    with capsys.disabled():
        print(f"\nHamming distance, 100 permutations: greedy-mean (N&F) min {greedy['min']} mean {greedy['mean']:.3f}; "
              f"greedy-min min {maximin['min']} mean {maximin['mean']:.3f}; random sets min "
              f"{[r['min'] for r in randoms]} mean {np.mean([r['mean'] for r in randoms]):.3f}")
    assert greedy["mean"] > max(r["mean"] for r in randoms)
    assert maximin["min"] > max(r["min"] for r in randoms)


def test_permutation_save_load(tmp_path, perms):
    digest = jigsaw.save_permutations(tmp_path / "p.txt", perms)
    assert (jigsaw.load_permutations(tmp_path / "p.txt") == perms).all()
    assert (tmp_path / "p.txt.sha256").read_text().split() == [digest, "p.txt"]
    np.save(tmp_path / "p.npy", perms)
    assert (jigsaw.load_permutations(tmp_path / "p.npy") == perms).all()
    np.save(tmp_path / "one_based.npy", perms + 1)  # some published sets number the tiles 1..9
    assert (jigsaw.load_permutations(tmp_path / "one_based.npy") == perms).all()
    np.save(tmp_path / "bad.npy", np.zeros((3, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="permutations of 0..8"):
        jigsaw.load_permutations(tmp_path / "bad.npy")
    np.save(tmp_path / "objects.npy", np.array([perms[0], "x"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a .npy array"):  # never unpickled
        jigsaw.load_permutations(tmp_path / "objects.npy")


def test_committed_set_is_the_generated_one(perms):
    committed, digest = jigsaw.permutation_set(None, 100)
    assert (committed == perms).all()
    assert digest == jigsaw.DEFAULT_PERMUTATIONS.with_name("max_hamming_100.txt.sha256").read_text().split()[0]
    # greedy: the first n rows are the greedy set of n
    assert (jigsaw.permutation_set(None, 30)[0] == jigsaw.max_hamming_permutations(30, seed=0)).all()
    with pytest.raises(ValueError, match="has 100 rows"):
        jigsaw.permutation_set(None, 101)


def test_tampered_committed_set_is_refused(tmp_path, monkeypatch, perms):
    copy = tmp_path / "max_hamming_100.txt"
    jigsaw.save_permutations(copy, perms)
    copy.write_text(copy.read_text().replace("0 1 2 3 4 5 6 7 8", "1 0 2 3 4 5 6 7 8", 1))
    monkeypatch.setattr(jigsaw, "DEFAULT_PERMUTATIONS", copy)
    with pytest.raises(ValueError, match="does not match its sha256"):
        jigsaw.permutation_set(None, 100)


def coordinate_image(side: int = jigsaw.RESIZE) -> np.ndarray:
    """Pixel (y, x) holds (y % 256, x % 256, 16·(y // 256) + x // 256): positions are recoverable."""
    y, x = np.mgrid[:side, :side]
    return np.stack([y % 256, x % 256, 16 * (y // 256) + x // 256], -1).astype(np.uint8)


def position(tile: np.ndarray) -> tuple[int, int]:
    p = tile[0, 0].astype(int)
    return p[0] + 256 * (p[2] // 16), p[1] + 256 * (p[2] % 16)


def test_tile_geometry_train_and_test():
    image = coordinate_image()
    centred = jigsaw.tile_crops(image, None)
    assert centred.shape == (9, 64, 64, 3) and centred.dtype == np.uint8
    for t in range(9):
        assert position(centred[t]) == (18 + (t // 3) * 85 + 10, 18 + (t % 3) * 85 + 10)
    rng = np.random.default_rng(0)
    for _ in range(20):
        tiles = jigsaw.tile_crops(image, rng)
        corners = np.array([position(t) for t in tiles])
        for t, (y, x) in enumerate(corners):
            np.testing.assert_array_equal(tiles[t], image[y:y + 64, x:x + 64])  # contiguous 64×64 crops
        # tile t = crop origin (0..37, shared) + its cell (85-pixel steps) + an offset in the cell (0..21)
        in_cell = corners - 85 * np.stack([np.arange(9) // 3, np.arange(9) % 3], 1)
        assert in_cell.min() >= 0 and in_cell.max() <= 37 + 21
        assert (in_cell.max(0) - in_cell.min(0)).max() <= 21


def test_eval_grid_is_gapless():
    image = coordinate_image(192)
    tiles = jigsaw.grid_tiles(image)
    for t in range(9):
        np.testing.assert_array_equal(tiles[t], image[(t // 3) * 64:(t // 3 + 1) * 64, (t % 3) * 64:(t % 3 + 1) * 64])


def test_make_batch_layout_and_statistics(perms):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(10, 9, 64, 64, 3), dtype=np.uint8)
    tiles[3, 4] = 7  # a constant patch must not produce NaN
    batch = jigsaw.make_batch(tiles, np.arange(10), perms, 16, np.random.default_rng(1), train=False)
    assert batch["patches"].shape == (160, 9, 3, 64, 64) and batch["patches"].dtype == torch.float32
    assert torch.isfinite(batch["patches"]).all()
    for name, shape in [("perm_index", (160,)), ("batch_perms", (16,)), ("perm_slot", (160,)),
                        ("image_index", (160,)), ("label", (160,))]:
        assert batch[name].shape == shape and batch[name].dtype == torch.int64
    assert len(set(batch["batch_perms"].tolist())) == 16
    assert (batch["perm_index"] == batch["batch_perms"][batch["perm_slot"]]).all()
    assert (batch["label"] == batch["image_index"]).all()
    # per-patch, per-channel standardisation, computed the slow obvious way
    expected = []
    for i in range(10):
        x = tiles[i].astype(np.float64).transpose(0, 3, 1, 2)
        m, s = x.mean((2, 3), keepdims=True), x.std((2, 3), keepdims=True)
        expected.append((x - m) / np.sqrt(s ** 2 + jigsaw.EPS))
    for r in (0, 17, 63, 159):
        i, perm = batch["image_index"][r].item(), perms[batch["perm_index"][r].item()]
        np.testing.assert_allclose(batch["patches"][r].numpy(), expected[i][perm], atol=1e-4)
    p = batch["patches"].double()
    nonconstant = p[batch["image_index"] != 3]
    assert nonconstant.mean((-2, -1)).abs().max() < 1e-4
    assert (nonconstant.std((-2, -1), unbiased=False) - 1).abs().max() < 1e-3


def test_grayscale_share_and_channels(perms):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(200, 9, 8, 8, 3), dtype=np.uint8)
    gen = np.random.default_rng(5)
    batch = jigsaw.make_batch(tiles, np.zeros(200), perms, 1, gen, train=True)
    x = batch["patches"]
    gray = (x[:, :, 0] == x[:, :, 1]).all(-1).all(-1).all(-1) & (x[:, :, 1] == x[:, :, 2]).all(-1).all(-1).all(-1)
    assert 0.55 < gray.float().mean().item() < 0.77  # p = 0.66


def test_buffer_pool_never_hands_out_memory_in_use():
    pool = jigsaw.BufferPool(size=2)
    a = pool.get((4, 1 << 20))
    a.fill_(1.0)
    view = a[0]
    b = pool.get((4, 1 << 20))  # a is alive: must be other memory
    assert b.data_ptr() != a.data_ptr()
    b.fill_(2.0)
    assert view.min().item() == 1.0
    ptr = a.data_ptr()
    del a
    c = pool.get((4, 1 << 20))  # a's view still holds the memory
    assert c.data_ptr() != ptr
    del view, c
    assert pool.get((4, 1 << 20)).data_ptr() == ptr  # free again: reused


def test_scramble_from_unique_tiles_equals_gathered(perms):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(3, 9, 64, 64, 3), dtype=np.uint8)
    full = jigsaw.make_batch(tiles, np.arange(3), perms, 4, np.random.default_rng(2), train=True)
    light = jigsaw.make_batch(tiles, np.arange(3), perms, 4, np.random.default_rng(2), train=True, gather=False)
    assert light["tiles"].shape == (3, 9, 3, 64, 64) and "patches" not in light
    rebuilt = jigsaw.scramble(light["tiles"], light["perm_rows"], light["image_index"], light["perm_slot"])
    torch.testing.assert_close(rebuilt, full["patches"])
