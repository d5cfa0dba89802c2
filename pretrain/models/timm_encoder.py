"""Any timm model as a feature encoder (ResNet50 by default elsewhere: 2048 features per patch)."""
from __future__ import annotations

import timm
from torch import nn


# The keyword options a timm encoder takes from a config or a checkpoint: architecture only. Every other
# timm.create_model option is refused: some read files or fetch weights (checkpoint_path,
# pretrained_cfg_overlay, cache_dir), and a checkpoint is data that must not choose what is read.
OPTIONS = ("drop_rate", "drop_path_rate", "drop_block_rate", "in_chans", "global_pool", "img_size", "output_stride")


def build_timm_encoder(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0)``: x [B, 3, H, W] -> [B, feature_dim].

    The returned module is the timm model itself (its state_dict keys are timm's, so checkpoints
    load into a plain timm model too), with ``feature_dim = num_features`` added. Extra keyword
    arguments go to ``timm.create_model`` (e.g. ``drop_path_rate``). Pretrained weights are not
    allowed: the point is to learn the encoder from scratch (and nothing can be downloaded here).
    """
    if kwargs.pop("pretrained", False):
        raise ValueError(f"encoder {name!r}: pretrained=True is not supported; encoders are trained from scratch")
    if "num_classes" in kwargs:
        raise ValueError(f"encoder {name!r}: num_classes is fixed to 0 (pooled features); drop the option")
    if "depth" in kwargs:
        raise ValueError(f"encoder {name!r}: depth applies only to the dcgan encoder; unset model.depth")
    for key in kwargs:
        if key not in OPTIONS:
            raise ValueError(f"encoder {name!r}: model.kwargs.{key} is not an option here; a timm encoder "
                             f"takes {', '.join(OPTIONS)}")
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    model.feature_dim = int(model.num_features)
    return model
