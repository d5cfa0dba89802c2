"""The jigsaw MI witness f(x, y) of the paper's Appendix D.

x is the 9 patch features of a scrambled puzzle, y the one-hot of a permutation (100). The paper:
"x and y are first linearly projected in a common dimensionality of 512. Then x goes through a
shallow network made of 2 sequential stages each composed of CNN, batch normalization, ReLU, and
max pooling. After these 2 stages, we have about a combined 9216 features that we project to 512
... f(x, y) is then just the dot product of 512 feature vectors from x and y once normalized".

The text leaves the convolution's layout open. Our reading: the projected puzzle [9, 512] is a 1-D
signal of length 512 whose 9 channels are the patch slots, so every output of the first
convolution already sees all 9 patches in their scrambled order (what a descrambler needs):

    x [P, 9, D] → linear D→512 per patch → [P, 9, 512]
      → conv1d 9→36 (k 3, pad 1), BN, ReLU, max-pool 2 → [P, 36, 256]
      → conv1d 36→72 (k 3, pad 1), BN, ReLU, max-pool 2 → [P, 72, 128] = 9,216 features
      → linear 9216 → 512
    y one-hot [M, 100] → linear 100 → 512
    f(x_i, y_j) = score_scale · cos(x_i, y_j)

which gives exactly 9,216 features after the two stages. ``score_scale`` = 1 is the paper's plain
cosine (scores in [−1, 1], so the MI estimate is at most 2 nats); a larger scale lets the bound
grow past that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.jigsaw import NUM_PERMUTATIONS


def _unit_fp32(v: torch.Tensor) -> torch.Tensor:
    """Rows of v scaled to unit length, computed in float32 (bf16 would round cosines to ~0.4%)."""
    with torch.autocast(device_type=v.device.type, enabled=False):
        return F.normalize(v.float(), dim=1)


class JigsawWitness(nn.Module):
    """Scores every puzzle against every candidate permutation.

    Args:
        feature_dim: encoder features per patch (2048 for ResNet50).
        num_permutations: size of the permutation set (length of the one-hot y).
        num_patches: patches per puzzle (9). embed_dim: common dimension (512).
        channels: channels of the two conv stages (36, 72: 72 × 128 = 9,216 features).
        score_scale: multiplies the cosine (1 = the paper).
        log_baseline: also build a per-permutation baseline η(y) (for ``a-mine``).
    """

    def __init__(self, feature_dim: int, num_permutations: int = NUM_PERMUTATIONS, num_patches: int = 9,
                 embed_dim: int = 512, channels: tuple[int, int] = (36, 72), score_scale: float = 1.0,
                 log_baseline: bool = False):
        super().__init__()
        if embed_dim % 4 != 0:
            raise ValueError(f"embed_dim must be divisible by 4 (two max-pools of 2), got {embed_dim}")
        self.num_patches, self.num_permutations, self.score_scale = num_patches, num_permutations, float(score_scale)
        self.x_proj = nn.Linear(feature_dim, embed_dim)
        c1, c2 = channels
        self.x_stages = nn.Sequential(
            nn.Conv1d(num_patches, c1, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm1d(c1),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(c1, c2, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm1d(c2),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
        )
        self.x_out = nn.Linear(c2 * (embed_dim // 4), embed_dim)
        self.y_proj = nn.Linear(num_permutations, embed_dim)
        # η(y) for a-MINE: one learned value per permutation (a linear map of the one-hot).
        self.baseline = nn.Linear(num_permutations, 1) if log_baseline else None

    def embed_x(self, features: torch.Tensor) -> torch.Tensor:
        """features [P, 9, D] (scrambled order) -> unit vectors [P, embed_dim]."""
        if features.dim() != 3 or features.shape[1] != self.num_patches:
            raise ValueError(f"jigsaw witness expects features [P, {self.num_patches}, D], got {tuple(features.shape)}")
        h = self.x_stages(self.x_proj(features))
        return _unit_fp32(self.x_out(h.flatten(1)))

    def embed_y(self, perms: torch.Tensor) -> torch.Tensor:
        """perms [M] permutation indices -> unit vectors [M, embed_dim]."""
        return _unit_fp32(_linear_of_one_hot(self.y_proj, perms))

    def log_baseline(self, perms: torch.Tensor) -> torch.Tensor:
        """perms [M] -> η(y_j) [M] (needs ``log_baseline=True``)."""
        if self.baseline is None:
            raise ValueError("this witness was built without log_baseline=True")
        return _linear_of_one_hot(self.baseline, perms).squeeze(1)

    def forward(self, features: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
        """features [P, 9, D], perms [M] -> scores [P, M] float32, f(x_i, y_j) = score_scale · cos."""
        x, y = self.embed_x(features), self.embed_y(perms)
        with torch.autocast(device_type=x.device.type, enabled=False):  # cosines in float32, also under bf16
            return self.score_scale * x @ y.T


def _linear_of_one_hot(linear: nn.Linear, index: torch.Tensor) -> torch.Tensor:
    """``linear(one_hot(index))`` [M, out] as a column lookup: ``F.one_hot`` checks the index range by
    reading it back from the device, which would stall every step on an accelerator."""
    return F.embedding(index.long(), linear.weight.T) + linear.bias
