"""The offline demo sources: scikit-learn digits and scikit-image photo crops, through the CLI."""
import io
import json
import tarfile

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from data_prep.__main__ import main


def read_samples(shard_dir, split):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    out = {}
    for shard in manifest["splits"][split]["shards"]:
        with tarfile.open(shard_dir / shard["name"] if "name" in shard else shard_dir / shard["path"]) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return manifest, out


def test_digits_shards_round_trip(tmp_path):
    assert main(["digits", "--out", str(tmp_path), "--size", "16", "--no-progress", "--workers", "1"]) == 0
    manifest, train = read_samples(tmp_path, "train")
    _, test = read_samples(tmp_path, "test")
    d = load_digits()
    assert manifest["dataset"] == "sklearn-digits"
    assert len(train) + len(test) == len(d.target) == 1797 and not set(train) & set(test)
    labels = np.array([int(s["cls"]) for s in test.values()])
    assert abs(len(test) - 0.2 * 1797) <= 10 and np.bincount(labels, minlength=10).min() >= 34  # stratified
    key = sorted(train)[0]
    index = int(key.rsplit("_", 1)[1])
    image = np.asarray(Image.open(io.BytesIO(train[key]["png"])))
    assert image.shape == (16, 16, 3) and int(train[key]["cls"]) == d.target[index]
    expected = np.asarray(Image.fromarray(np.uint8(np.round(d.images[index] * 255 / 16))).resize((16, 16), Image.BILINEAR))
    assert np.array_equal(image[:, :, 0], expected)


def test_skimage_crops_are_deterministic(tmp_path):
    for name in ("a", "b"):
        assert main(["skimage-crops", "--images", "20", "--out", str(tmp_path / name), "--no-progress", "--workers", "1"]) == 0
    _, a = read_samples(tmp_path / "a", "train")
    _, b = read_samples(tmp_path / "b", "train")
    assert a.keys() == b.keys() and all(a[k]["jpg"] == b[k]["jpg"] for k in a)
    assert all(min(Image.open(io.BytesIO(s["jpg"])).size) >= 120 for s in a.values())
