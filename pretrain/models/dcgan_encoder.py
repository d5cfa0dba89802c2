"""The DCGAN-style encoder of the paper's Deep InfoMax experiment (§5, Fig. 4a) for 32×32 images.

A stack of strided 4×4 convolutions, each halving the resolution (Radford et al. 2015, as in the
DCGAN encoder of Hjelm et al.'s Deep InfoMax):

    layer 1: conv 3→64,    4×4 stride 2, ReLU          32×32 → 16×16
    layer 2: conv 64→128,  4×4 stride 2, BN, ReLU      16×16 →  8×8
    layer 3: conv 128→256, 4×4 stride 2, BN, ReLU       8×8  →  4×4
    layer 4: conv 256→512, 4×4 stride 2, BN, ReLU       4×4  →  2×2

``depth`` keeps the first ``depth`` layers; the paper's best encoder is the first two (depth 2,
8,192 features). No batch norm on the first layer, as in DCGAN's discriminator.
"""
from __future__ import annotations

import torch
from torch import nn

CHANNELS = (64, 128, 256, 512)


class DCGANEncoder(nn.Module):
    """DCGAN-style convolutional encoder.

    Args:
        depth: how many conv layers to keep, 1..4 (paper's best: 2).
        image_size: input height and width (32 for CIFAR10 and STL10 scaled down); must be
            divisible by 2**depth.
        in_channels: input channels (3).

    ``forward(x [B, C, S, S]) -> [B, feature_dim]``: the last kept layer's map, flattened in
    (channel, row, column) order. ``forward_layers(x)`` returns every kept layer's map.
    """

    def __init__(self, depth: int = 2, image_size: int = 32, in_channels: int = 3):
        super().__init__()
        if not 1 <= depth <= len(CHANNELS):
            raise ValueError(f"dcgan depth must be in 1..{len(CHANNELS)}, got {depth}")
        if image_size % (2**depth) != 0:
            raise ValueError(f"dcgan image_size {image_size} is not divisible by 2**depth = {2**depth}")
        self.depth, self.image_size, self.in_channels = depth, image_size, in_channels
        layers = []
        c_in = in_channels
        for i, c_out in enumerate(CHANNELS[:depth]):
            # The conv before a BN needs no bias (BN's shift replaces it).
            block = [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=(i == 0))]
            if i > 0:
                block.append(nn.BatchNorm2d(c_out))
            block.append(nn.ReLU(inplace=True))
            layers.append(nn.Sequential(*block))
            c_in = c_out
        self.layers = nn.ModuleList(layers)
        side = image_size // 2**depth
        self.feature_dim = CHANNELS[depth - 1] * side * side

    def layer_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, height, width) of each kept layer's output, layer 1 first."""
        return [(c, self.image_size // 2 ** (i + 1), self.image_size // 2 ** (i + 1)) for i, c in enumerate(CHANNELS[: self.depth])]

    def forward_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B, C, S, S] -> list of ``depth`` maps; map i (0-based) is [B, CHANNELS[i], S/2^(i+1), S/2^(i+1)]."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"dcgan encoder expects images [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                f"got {tuple(x.shape)}; resize the input or build it with image_size="
            )
        maps = []
        for layer in self.layers:
            x = layer(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, S, S] -> features [B, feature_dim]."""
        # flatten copies when x is channels_last, keeping the (C, H, W) order a linear probe expects.
        return self.forward_layers(x)[-1].flatten(1)
