"""Take the pretrained encoder away: its weights alone, in one ``.safetensors`` file.

    python -m pretrain.export RUN_OR_CHECKPOINT --out encoder.safetensors

The file holds the encoder's state dict and nothing else (no heads, no η, no optimiser), under
the key names of the encoder module itself. A timm encoder (e.g. ``resnet50``) is a plain timm
model without its classifier, so the file loads where timm weights load::

    import timm
    encoder = timm.create_model("resnet50", pretrained=True, num_classes=0,
                                pretrained_cfg_overlay=dict(file="encoder.safetensors"))

and, for ResNets, into torchvision's model of the same name (only ``fc`` is absent)::

    from safetensors.torch import load_file
    model = torchvision.models.resnet50()
    model.load_state_dict(load_file("encoder.safetensors"), strict=False)  # missing: fc.weight, fc.bias
    model.fc = torch.nn.Identity()

The DCGAN-style encoder is this project's own module; :func:`load_exported` rebuilds it (or any
exported encoder) from the architecture recorded in the file's metadata.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from torch import nn

# safetensors metadata keys (string values only)
META_FORMAT = "eta_mine_export"
META_MODEL = "model"  # the run's resolved ``model`` section, JSON
META_FEATURE_DIM = "feature_dim"
META_STEP = "step"
META_SOURCE = "checkpoint"


def export_encoder(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the encoder of ``checkpoint`` (run dir, checkpoint dir or file) to ``out`` (safetensors).

    The weights are checked to load (strict) into the encoder the run's config describes before
    anything is written. Returns the metadata written: the model section, feature dimension, step
    and source checkpoint.
    """
    from safetensors.torch import save

    from storage.files import atomic_write_bytes
    from pretrain.checkpoint import encoder_from_payload, load_checkpoint

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: name the file *.safetensors (timm picks the loader by extension)")
    payload = load_checkpoint(checkpoint)
    encoder, config = encoder_from_payload(payload)
    # safetensors refuses tensors that share memory or are not contiguous; copies are cheap here.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
    metadata = {
        META_FORMAT: "1",
        META_MODEL: json.dumps(config["model"], sort_keys=True),
        META_FEATURE_DIM: str(int(encoder.feature_dim)),
        META_STEP: str(int(payload["step"])),
        META_SOURCE: str(payload["path"]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, save(state, metadata=metadata))
    return metadata


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata :func:`export_encoder` wrote into ``path``; a one-line ``ValueError`` otherwise."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported encoder {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # truncated or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read {path} as safetensors: {first}") from None
    if META_FORMAT not in meta:
        raise ValueError(f"{path} was not written by pretrain.export (no {META_FORMAT!r} metadata); "
                         f"load it with timm or torchvision directly")
    return meta


def load_exported(path: str | os.PathLike) -> nn.Module:
    """Rebuild the encoder an exported file describes and load its weights (strict, eval mode).

    Works for every encoder, and is the way to load the DCGAN-style encoder (which timm and
    torchvision do not know): the module maps images [B, 3, H, W] to features [B, feature_dim].
    """
    from safetensors.torch import load_file

    from pretrain.models import build_encoder_from_config

    meta = read_metadata(path)
    encoder = build_encoder_from_config(json.loads(meta[META_MODEL]))
    encoder.load_state_dict(load_file(str(path)), strict=True)
    return encoder.eval()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="run directory (its latest checkpoint), checkpoint directory or checkpoint.pt")
    p.add_argument("--out", required=True, help="output file, *.safetensors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        meta = export_encoder(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = json.loads(meta[META_MODEL])
    print(f"wrote {args.out}: encoder {model['encoder']} ({meta[META_FEATURE_DIM]} features) "
          f"from step {meta[META_STEP]} of {meta[META_SOURCE]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
