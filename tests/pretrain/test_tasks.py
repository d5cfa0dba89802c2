"""Tasks: losses are finite and reach the encoder (and η), masks follow the paper, a few steps learn."""
import pytest
import torch

from pretrain import estimators
from pretrain.models import build_encoder
from pretrain.tasks import build_task, jigsaw_masks, kinds

PATCH = 8  # tiny patches keep 160-puzzle batches cheap on 2 cores


def tiny_encoder(seed=0):
    """A DCGAN encoder for 8×8 patches: 64 × 4 × 4 = 1,024 features."""
    torch.manual_seed(seed)
    return build_encoder("dcgan", depth=1, image_size=PATCH)


def jigsaw_batch(n_images=10, n_perms=16, seed=0):
    """An easy but genuine jigsaw batch as the stream lays it out: each image's 9 cells carry
    their grid position in their brightness (plus noise), then each puzzle is scrambled."""
    gen = torch.Generator().manual_seed(seed)
    perm_set = torch.stack([torch.randperm(9, generator=gen) for _ in range(100)])
    batch_perms = torch.randperm(100, generator=gen)[:n_perms]
    position = torch.linspace(-1.5, 1.5, 9).view(1, 9, 1, 1, 1)
    cells = position + 0.3 * torch.randn(n_images, 9, 3, PATCH, PATCH, generator=gen)
    image_index = torch.arange(n_images).repeat_interleave(n_perms)
    perm_slot = torch.arange(n_perms).repeat(n_images)
    perm_index = batch_perms[perm_slot]
    patches = torch.stack([cells[i][perm_set[p]] for i, p in zip(image_index.tolist(), perm_index.tolist())])
    return {"patches": patches, "perm_index": perm_index, "batch_perms": batch_perms, "perm_slot": perm_slot,
            "image_index": image_index, "label": torch.zeros(len(perm_index), dtype=torch.long)}


def infomax_batch(n=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(n, 3, 32, 32, generator=gen), "label": torch.zeros(n, dtype=torch.long)}


def make_task(kind, estimator=None, **kwargs):
    if kind == "infomax":
        torch.manual_seed(0)
        return build_task(kind, build_encoder("dcgan", depth=2), estimator=estimator, **kwargs)
    return build_task(kind, tiny_encoder(), estimator=estimator, **kwargs)


def batch_for(kind, **kwargs):
    return infomax_batch(**kwargs) if kind == "infomax" else jigsaw_batch(**kwargs)


def assert_scalar_metrics(out):
    for key, value in out.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        if key != "loss":
            assert not value.requires_grad, key


# ---------------------------------------------------------------------------------------- masks
def test_jigsaw_masks_pair_every_puzzle_once_each_way():
    slot = torch.arange(16).repeat(10)
    pos, neg = jigsaw_masks(slot, 16, seed=123)
    assert pos.shape == neg.shape == (160, 16)
    assert pos.sum() == 160 and neg.sum() == 160
    assert (pos.sum(1) == 1).all() and (neg.sum(1) == 1).all()
    assert not (pos & neg).any()
    assert (pos.float().argmax(1) == slot).all()
    again, other = jigsaw_masks(slot, 16, seed=123)[1], jigsaw_masks(slot, 16, seed=124)[1]
    assert torch.equal(neg, again) and not torch.equal(neg, other)
    # over many puzzles every other column is drawn, the own column never
    cols = neg.float().argmax(1)
    _, big_neg = jigsaw_masks(torch.zeros(3000, dtype=torch.long), 16, seed=0)
    counts = big_neg.sum(0)
    assert counts[0] == 0 and (counts[1:] > 120).all()
    assert (cols != slot).all()


def test_jigsaw_mi_task_uses_160_joint_and_160_marginal_pairs(monkeypatch):
    task = make_task("jigsaw-mi", "eta-mine")
    seen = {}
    forward = task.estimator.forward

    def spy(scores, pos_mask=None, neg_mask=None, **extra):
        seen.update(scores=scores, pos=pos_mask, neg=neg_mask)
        return forward(scores, pos_mask, neg_mask, **extra)

    monkeypatch.setattr(task.estimator, "forward", spy)
    batch = jigsaw_batch()
    task(batch)
    assert seen["scores"].shape == (160, 16)
    assert seen["pos"].sum() == 160 and seen["neg"].sum() == 160
    assert (seen["pos"].float().argmax(1) == batch["perm_slot"]).all()
    first_neg = seen["neg"].clone()
    task(batch)  # the same batch draws the same marginal pairs
    assert torch.equal(seen["neg"], first_neg)


# ------------------------------------------------------------------------- forward and gradients
CASES = [("jigsaw-ce", None)] + [("jigsaw-mi", e) for e in estimators.names()] + [("infomax", e) for e in estimators.names()]


@pytest.mark.parametrize("kind,estimator", CASES)
def test_loss_is_finite_and_reaches_the_encoder(kind, estimator):
    task = make_task(kind, estimator)
    small = {"n_images": 2, "n_perms": 4} if kind != "infomax" else {"n": 8}
    out = task(batch_for(kind, **small))
    assert_scalar_metrics(out)
    assert out["loss"].requires_grad
    out["loss"].backward()
    enc_grads = [p.grad for p in task.encoder.parameters()]
    assert all(g is not None for g in enc_grads) and sum(g.abs().sum() for g in enc_grads) > 0
    expected = {"loss"} | ({"acc"} if kind.startswith("jigsaw") else set()) | ({"mi"} if estimator else set())
    if isinstance(task.estimator, estimators.EtaMINE):
        expected |= {"eta", "normaliser", "mi/refit"}
        assert out["mi/refit"] >= out["mi"] - 1e-6  # η in closed form on the same pairs: never looser
        if task.estimator.eta.requires_grad:  # eta-mine-ema sets η in closed form instead
            # dL/dη = 1 − e^{-η}·mean_marg e^f (zero when the scores start at zero, so compare, not != 0)
            assert task.estimator.eta.grad is not None
            assert torch.allclose(task.estimator.eta.grad, 1 - out["normaliser"], atol=1e-6)
    assert set(out) == expected


def test_eta_and_main_parameters_split_the_task():
    task = make_task("jigsaw-mi", "eta-mine")
    eta = task.eta_parameters()
    assert len(eta) == 1 and eta[0] is task.estimator.eta
    main = task.main_parameters()
    assert {id(p) for p in main} | {id(eta[0])} == {id(p) for p in task.parameters()}
    assert id(eta[0]) not in {id(p) for p in main}
    assert make_task("jigsaw-ce").eta_parameters() == []
    assert make_task("infomax", "dv-mine").eta_parameters() == []


def test_eta_metrics_follow_the_estimator():
    task = make_task("infomax", "eta-mine")
    with torch.no_grad():
        task.estimator.set_eta(0.5)
        out = task(infomax_batch(8))
    assert out["eta"] == 0.5
    torch.testing.assert_close(out["normaliser"], task.estimator.normaliser)


def test_channels_last_encoder_gives_the_same_loss():
    task = make_task("jigsaw-ce").eval()
    batch = jigsaw_batch(2, 4)
    with torch.no_grad():
        ref = task(batch)["loss"]
        task.encoder.to(memory_format=torch.channels_last)
        torch.testing.assert_close(task(batch)["loss"], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,estimator", [("jigsaw-ce", None), ("jigsaw-mi", "eta-mine"), ("infomax", "eta-mine")])
def test_bf16_autocast_keeps_scores_and_loss_in_float32(kind, estimator, monkeypatch):
    task = make_task(kind, estimator)
    seen = {}
    if estimator:
        forward = task.estimator.forward

        def spy(scores, *args, **kwargs):
            seen["dtype"] = scores.dtype
            return forward(scores, *args, **kwargs)

        monkeypatch.setattr(task.estimator, "forward", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = task(batch_for(kind, **({"n_images": 2, "n_perms": 4} if kind != "infomax" else {"n": 8})))
    out["loss"].backward()
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    if estimator:
        assert seen["dtype"] == torch.float32


def test_timm_encoder_in_a_jigsaw_task():
    torch.manual_seed(0)
    task = build_task("jigsaw-ce", build_encoder("resnet18"))
    out = task(jigsaw_batch(2, 2))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and task.encoder.conv1.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ a few steps learn
@pytest.mark.parametrize("kind,estimator,steps", [
    ("jigsaw-ce", None, 15), ("jigsaw-mi", "eta-mine", 15), ("jigsaw-mi", "dv-mine", 15),
    ("infomax", "eta-mine", 10), ("infomax", "dv-mine", 10),
])
def test_a_few_steps_lower_the_loss(kind, estimator, steps):
    task = make_task(kind, estimator)
    batch = batch_for(kind, **({"n_images": 4, "n_perms": 8} if kind != "infomax" else {"n": 16}))
    opts = [torch.optim.Adam(task.main_parameters(), lr=1e-3)]
    if task.eta_parameters():
        opts.append(torch.optim.Adam(task.eta_parameters(), lr=1e-2))
    losses = []
    for _ in range(steps):
        out = task(batch)
        for opt in opts:
            opt.zero_grad()
        out["loss"].backward()
        for opt in opts:
            opt.step()
        losses.append(out["loss"].item())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kind,estimator,kwargs,match", [
    ("nope", None, {}, "unknown task kind 'nope'"),
    ("jigsaw-ce", "eta-mine", {}, "unset estimator"),
    ("jigsaw-mi", None, {}, "needs an estimator"),
    ("infomax", None, {}, "needs an estimator"),
    ("jigsaw-mi", "no-such-bound", {}, "unknown estimator"),
])
def test_bad_task_options(kind, estimator, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_task(kind, tiny_encoder(), estimator=estimator, **kwargs)


def test_infomax_needs_layers_of_a_dcgan_encoder():
    with pytest.raises(ValueError, match="forward_layers"):
        build_task("infomax", build_encoder("resnet18"), estimator="eta-mine")
    with pytest.raises(ValueError, match="no gradient"):
        build_task("infomax", build_encoder("dcgan", depth=3), estimator="eta-mine", layer_l=1, layer_k=2)
    with pytest.raises(ValueError, match="layer_l < layer_k"):
        build_task("infomax", build_encoder("dcgan", depth=2), estimator="eta-mine", layer_l=2, layer_k=2)
    task = build_task("infomax", build_encoder("dcgan", depth=3), estimator="eta-mine", layer_l=2)
    assert (task.layer_l, task.layer_k) == (2, 3)


def test_bad_batches_are_one_line_errors():
    task = make_task("jigsaw-mi", "eta-mine")
    batch = jigsaw_batch(2, 4)
    with pytest.raises(ValueError, match="no 'perm_slot'"):
        task({k: v for k, v in batch.items() if k != "perm_slot"})
    with pytest.raises(ValueError, match=r"batch_perms\[perm_slot\] must equal perm_index"):
        task({**batch, "perm_slot": batch["perm_slot"].roll(1)})
    with pytest.raises(ValueError, match="must be a 5-D tensor"):
        task({**batch, "patches": batch["patches"][0]})
    with pytest.raises(ValueError, match="perm_index outside"):
        build_task("jigsaw-ce", tiny_encoder(), num_permutations=10)({**batch, "perm_index": batch["perm_index"] + 100})
    with pytest.raises(ValueError, match="no 'images'"):
        make_task("infomax", "eta-mine")(batch)


def test_kinds_lists_every_task():
    assert kinds() == ["jigsaw-ce", "jigsaw-mi", "infomax", "supervised"]


def test_supervised_learns_the_labels_through_the_encoder():
    """Table 2's "Sup.": cross-entropy on the labels reaches the encoder and a few steps fit them."""
    torch.manual_seed(0)
    task = build_task("supervised", build_encoder("dcgan", depth=2), num_classes=10)
    batch = infomax_batch(16)
    batch["label"] = torch.arange(16) % 10
    opt = torch.optim.Adam(task.main_parameters(), lr=1e-3)
    assert task.eta_parameters() == []
    losses = []
    for step in range(8):
        out = task(batch)
        assert set(out) == {"loss", "acc"}
        assert_scalar_metrics(out)
        opt.zero_grad()
        out["loss"].backward()
        if step == 0:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.encoder.parameters())
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] - 0.5 and out["acc"] > 0.5, losses
    with pytest.raises(ValueError, match="no 'label'"):
        task({"images": batch["images"]})
    with pytest.raises(ValueError, match="unset estimator"):
        build_task("supervised", build_encoder("dcgan", depth=2), estimator="eta-mine", num_classes=10)


@pytest.mark.parametrize("kind", kinds())
def test_registry_entry_is_complete(kind):
    """Every registered kind builds, names a stream with a preview and an eval protocol."""
    from eval.features import KINDS as EVAL_KINDS
    from pretrain.tasks import registry, spec

    s = spec(kind)
    assert s.kind == kind
    assert s.stream in registry.OPENERS and s.stream in registry.PREVIEWS
    assert s.eval_kind in EVAL_KINDS
    with pytest.raises(ValueError, match="unknown task kind"):
        spec(kind + "-nope")
