"""Encoders, heads and witnesses: shapes, layouts, and the errors on bad names or inputs."""
import pytest
import torch

from pretrain.models import DCGANEncoder, Descrambler, InfoMaxWitness, JigsawWitness, build_encoder

# Every name the registry supports, plus the default timm model (resnet50: shape only).
ENCODERS = [("dcgan", {}, 32, 8192), ("resnet18", {}, 32, 512), ("resnet50", {}, 32, 2048)]


@pytest.mark.parametrize("name,kwargs,size,dim", ENCODERS)
def test_encoder_feature_shape(name, kwargs, size, dim):
    torch.manual_seed(0)
    enc = build_encoder(name, **kwargs).eval()
    assert enc.feature_dim == dim
    with torch.no_grad():
        out = enc(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim)


@pytest.mark.parametrize("depth,dim", [(1, 64 * 16 * 16), (2, 128 * 8 * 8), (3, 256 * 4 * 4), (4, 512 * 2 * 2)])
def test_dcgan_depth_selects_layers(depth, dim):
    torch.manual_seed(0)
    enc = build_encoder("dcgan", depth=depth)
    assert enc.feature_dim == dim and len(enc.layers) == depth
    x = torch.randn(3, 3, 32, 32)
    maps = enc.forward_layers(x)
    assert [tuple(m.shape[1:]) for m in maps] == enc.layer_shapes()
    assert torch.equal(enc(x), maps[-1].flatten(1))


def test_dcgan_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    enc = build_encoder("dcgan", depth=3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = enc(x)
        enc_cl = enc.to(memory_format=torch.channels_last)
        out = enc_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_dcgan_other_image_size():
    enc = build_encoder("dcgan", depth=2, image_size=16)
    assert enc.feature_dim == 128 * 4 * 4
    assert enc(torch.randn(2, 3, 16, 16)).shape == (2, 2048)


def test_timm_encoder_keeps_timm_state_dict_keys():
    import timm

    enc = build_encoder("resnet18")
    plain = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert enc.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("no-such-net", {}, "unknown encoder 'no-such-net'"),
        ("resnet18", {"pretrained": True}, "pretrained"),
        ("resnet18", {"depth": 2}, "depth applies only to the dcgan"),
        ("dcgan", {"depth": 0}, "depth must be in 1..4"),
        ("dcgan", {"depth": 4, "image_size": 24}, "not divisible"),
    ],
)
def test_bad_encoder_options_are_one_line_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        build_encoder(name, **kwargs)
    assert "\n" not in str(info.value)


def test_dcgan_rejects_wrong_input_size():
    with pytest.raises(ValueError, match=r"expects images \[B, 3, 32, 32\]"):
        DCGANEncoder()(torch.randn(1, 3, 64, 64))


def test_descrambler_layout():
    head = Descrambler(2048)
    assert head.patch_proj.in_features == 2048 and head.patch_proj.out_features == 512
    first, bn, _, drop, last = head.head
    assert first.in_features == 9 * 512 and first.out_features == 512
    assert isinstance(bn, torch.nn.BatchNorm1d) and isinstance(drop, torch.nn.Dropout)
    assert last.out_features == 100
    assert head(torch.randn(5, 9, 2048)).shape == (5, 100)
    with pytest.raises(ValueError, match=r"\[P, 9, D\]"):
        head(torch.randn(5, 8, 2048))


def test_jigsaw_witness_is_a_cosine_of_order_sensitive_features():
    torch.manual_seed(0)
    w = JigsawWitness(64)
    assert w.x_out.in_features == 9216  # the paper's "about 9216 features" after two stages
    feats, perms = torch.randn(6, 9, 64), torch.tensor([3, 7, 99])
    scores = w(feats, perms)
    assert scores.shape == (6, 3)
    assert scores.abs().max() <= 1 + 1e-5
    # the same patches in another order must give another x embedding (else no puzzle to solve)
    w.eval()
    swapped = feats[:, [1, 0, 2, 3, 4, 5, 6, 7, 8]]
    assert not torch.allclose(w.embed_x(feats), w.embed_x(swapped), atol=1e-4)
    scaled = JigsawWitness(64, score_scale=10.0)
    scaled.load_state_dict(w.state_dict())
    scaled.eval()
    torch.testing.assert_close(scaled(feats, perms), 10.0 * w(feats, perms))


def test_jigsaw_witness_baseline_is_per_permutation():
    w = JigsawWitness(32, log_baseline=True)
    perms = torch.tensor([4, 4, 9])
    b = w.log_baseline(perms)
    assert b.shape == (3,) and b[0] == b[1]
    with pytest.raises(ValueError, match="log_baseline=True"):
        JigsawWitness(32).log_baseline(perms)


def test_infomax_witness_scores_every_pair():
    torch.manual_seed(0)
    enc = build_encoder("dcgan", depth=2)
    shapes = enc.layer_shapes()
    w = InfoMaxWitness(shapes[0], shapes[1])
    maps = enc.forward_layers(torch.randn(5, 3, 32, 32))
    scores = w(maps[0], maps[1])
    assert scores.shape == (5, 5) and torch.isfinite(scores).all()
    a, b = w.embed(maps[0], maps[1])
    torch.testing.assert_close(scores[2, 4], w.scale * (a[2] * b[4]).sum())
