"""Encoders, heads and witnesses: they return features or scores, never losses.

    enc = build_encoder("resnet50")          # any timm model, or "dcgan" (depth=1..4)
    feats = enc(x)                           # x [B, 3, H, W] -> [B, enc.feature_dim]
"""
from .dcgan_encoder import DCGANEncoder
from .descrambler import Descrambler
from .infomax_witness import InfoMaxWitness
from .jigsaw_witness import JigsawWitness
from .registry import build_encoder, build_encoder_from_config

__all__ = ["DCGANEncoder", "Descrambler", "InfoMaxWitness", "JigsawWitness", "build_encoder", "build_encoder_from_config"]
