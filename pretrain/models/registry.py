"""Encoders by name: the paper's DCGAN-style encoder, or any timm model."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from .dcgan_encoder import DCGANEncoder


def build_encoder(name: str, **kwargs) -> nn.Module:
    """Build the encoder called ``name``: ``dcgan`` or any timm model name (e.g. ``resnet50``).

    The module has ``feature_dim`` and maps images [B, 3, H, W] to features [B, feature_dim];
    ``dcgan`` also has ``forward_layers`` (every conv layer's map, for InfoMax).
    Keyword options go to ``DCGANEncoder``, or to ``timm.create_model`` when they are architecture
    options (``timm_encoder.OPTIONS``: a checkpoint's config must not name files for timm to read).
    """
    if name == "dcgan":
        return DCGANEncoder(**kwargs)
    # timm imports torchvision and, through it, torch._dynamo: seconds that every process of a dcgan run
    # (the driver, each Ray worker) would pay for nothing
    import timm

    from .timm_encoder import build_timm_encoder

    if timm.is_model(name):
        return build_timm_encoder(name, **kwargs)
    raise ValueError(f"unknown encoder {name!r}: use 'dcgan' or a timm model name such as 'resnet50' (see timm.list_models())")


def build_encoder_from_config(model: Mapping[str, Any]) -> nn.Module:
    """Build the encoder described by the ``model`` section of a resolved config.

    ``model["encoder"]`` is a name for :func:`build_encoder`; ``model["depth"]`` (if not None) and
    ``model["kwargs"]`` are passed on.
    """
    kwargs = dict(model.get("kwargs") or {})
    if model.get("depth") is not None:
        kwargs["depth"] = model["depth"]
    return build_encoder(model["encoder"], **kwargs)
