"""The tiles layout (encoder on unique tiles, features gathered) equals the patches layout."""
import numpy as np
import pytest
import torch

from data_prep.jigsaw import make_batch, max_hamming_permutations
from pretrain.models import build_encoder
from pretrain.tasks import build_task


@pytest.mark.parametrize("kind,estimator", [("jigsaw-ce", None), ("jigsaw-mi", "eta-mine"), ("jigsaw-mi", "dv-mine")])
def test_tiles_and_patches_give_the_same_loss_and_gradients(kind, estimator):
    perms = max_hamming_permutations(20, seed=0)
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(3, 9, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(3)
    batches = [make_batch(tiles, labels, perms, 4, np.random.default_rng(1), gather=g) for g in (True, False)]
    assert "patches" in batches[0] and "tiles" in batches[1]
    grads, outs = [], []
    for batch in batches:
        torch.manual_seed(0)
        task = build_task(kind, build_encoder("dcgan", depth=3, image_size=32), estimator=estimator, num_permutations=20)
        out = task(batch)
        out["loss"].backward()
        outs.append(out)
        grads.append({k: p.grad.clone() for k, p in task.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0]["loss"], outs[1]["loss"], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("encoder.") for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-5, msg=k)


def test_tiles_layout_errors_name_the_key():
    task = build_task("jigsaw-ce", build_encoder("dcgan", depth=3, image_size=32), num_permutations=20)
    batch = make_batch(np.zeros((2, 9, 32, 32, 3), np.uint8), np.arange(2), max_hamming_permutations(20), 4,
                       np.random.default_rng(0), gather=False)
    del batch["perm_rows"]
    with pytest.raises(ValueError, match="perm_rows"):
        task(batch)
