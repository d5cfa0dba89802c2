"""Take the pretrained encoder away: its weights alone, in one ``.safetensors`` file.

    python -m pretrain.export RUN_OR_CHECKPOINT --out encoder.safetensors

``--out`` may be an ``s3://``/``gs://`` URL (written through :mod:`storage`). The command ends by
printing the Python lines that load what it wrote. The file holds the encoder's state dict and
nothing else (no heads, no η, no optimiser), under the key names of the encoder module itself.
:func:`load_exported` rebuilds any exported encoder from the architecture recorded in the file's
metadata. A timm encoder (e.g. ``resnet50``) is a plain timm model without its classifier;
:func:`load_into` loads the file into one strictly::

    encoder = load_into(timm.create_model("resnet50", num_classes=0), "encoder.safetensors")

(timm's own ``pretrained=True, pretrained_cfg_overlay=dict(file=...)`` loads it too, but without its
classifier timm loads leniently: a file of another architecture leaves random weights and a warning),

and, for ResNets, into torchvision's model of the same name (only ``fc`` is absent)::

    from safetensors.torch import load_file
    model = torchvision.models.resnet50()
    model.load_state_dict(load_file("encoder.safetensors"), strict=False)  # missing: fc.weight, fc.bias
    model.fc = torch.nn.Identity()

The DCGAN-style encoder is this project's own module: :func:`load_exported` is its loader.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from torch import nn

import storage

# safetensors metadata keys (string values only)
META_FORMAT = "eta_mine_export"
META_MODEL = "model"  # the run's resolved ``model`` section, JSON
META_FEATURE_DIM = "feature_dim"
META_STEP = "step"
META_SOURCE = "checkpoint"


def export_encoder(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the encoder of ``checkpoint`` (run dir, checkpoint dir or file) to ``out`` (safetensors;
    a local path or an ``s3://``/``gs://`` URL, written through :mod:`storage`).

    ``out`` is checked before the checkpoint is read (a ``*.safetensors`` name, not a directory, in
    a folder that can be written), and the weights are checked to load (strict) into the encoder the
    run's config describes before anything is written. Returns the metadata written: the model
    section, feature dimension, step and source checkpoint. One-line ``ValueError``/``OSError`` otherwise.
    """
    from safetensors.torch import save

    from pretrain.checkpoint import encoder_from_payload, load_checkpoint

    check_out(out)
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
    storage.makedirs(storage.parent(storage.resolve(out)))
    storage.write_bytes(storage.resolve(out), save(state, metadata=metadata))
    return metadata


def check_out(out: str | os.PathLike) -> None:
    """``--out`` names a ``*.safetensors`` file that can be written: a ``ValueError`` or
    :class:`~storage.writable.NotWritableError` (one line) before any work otherwise."""
    from storage.writable import check_writable_dir

    out = str(out)
    if not out.endswith(".safetensors"):
        raise ValueError(f"--out {out}: name the file *.safetensors (timm picks the loader by extension)")
    if storage.is_url(out):
        folder = storage.parent(storage.resolve(out))
    elif os.path.isdir(out):
        raise ValueError(f"--out {out} is a directory; name a file in it, e.g. {os.path.join(out, 'encoder.safetensors')}")
    else:
        folder = os.path.dirname(os.path.abspath(out))
    check_writable_dir(folder, "--out folder", "choose another --out")


def read_exported(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(metadata, state dict)`` of a file :func:`export_encoder` wrote (a local path or a URL);
    a one-line ``ValueError`` (``FileNotFoundError`` when it is not there) otherwise."""
    from safetensors.torch import load

    if not storage.isfile(path):
        raise FileNotFoundError(f"exported encoder {path} does not exist")
    data = storage.read_bytes(path)
    try:  # the safetensors layout: an 8-byte little-endian header length, the JSON header, the tensors
        n = int.from_bytes(data[:8], "little")
        if not 0 < n <= len(data) - 8:
            raise ValueError(f"header length {n} does not fit a file of {len(data)} bytes")
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        state = load(data)
    except Exception as exc:  # truncated or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read {path} as safetensors: {first}") from None
    if META_FORMAT not in meta:
        raise ValueError(f"{path} was not written by pretrain.export (no {META_FORMAT!r} metadata); "
                         f"load it with timm or torchvision directly")
    return meta, state


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata :func:`export_encoder` wrote into ``path``; a one-line ``ValueError`` otherwise."""
    return read_exported(path)[0]


def describe(meta: dict) -> str:
    """``dcgan (depth 2, 8192 features)``: the architecture an export holds."""
    model = json.loads(meta[META_MODEL])
    depth = f"depth {model['depth']}, " if model.get("depth") is not None else ""
    return f"{model['encoder']} ({depth}{meta[META_FEATURE_DIM]} features)"


def load_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an exported encoder's weights into ``model`` (strict) and return it in eval mode.

    A model of another architecture than the file holds (a DCGAN export into a ResNet, another depth)
    is a one-line ``ValueError`` naming what the file holds, never a model left with random weights.
    """
    meta, state = read_exported(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{path} holds the encoder {describe(meta)}, which does not fit this "
                         f"{type(model).__name__} ({first}); load it with pretrain.export.load_exported") from None
    return model.eval()


def load_exported(path: str | os.PathLike) -> nn.Module:
    """Rebuild the encoder an exported file describes and load its weights (strict, eval mode).

    Works for every encoder, and is the way to load the DCGAN-style encoder (which timm and
    torchvision do not know): the module maps images [B, 3, H, W] to features [B, feature_dim].
    """
    from pretrain.models import build_encoder_from_config

    return load_into(build_encoder_from_config(json.loads(read_metadata(path)[META_MODEL])), path)


def how_to_load(out: str, meta: dict) -> str:
    """The Python lines that load the export ``out`` for its kind of encoder."""
    model = json.loads(meta[META_MODEL])
    lines = ["from pretrain.export import load_exported",
             f"encoder = load_exported({out!r})  # images [B, 3, H, W] -> features [B, {meta[META_FEATURE_DIM]}]"]
    if model["encoder"] != "dcgan" and not storage.is_url(out):
        args = "".join(f", {k}={v!r}" for k, v in sorted((model.get("kwargs") or {}).items()))
        lines += ["# or with timm itself (strictly: a file of another architecture is an error):",
                  "import timm",
                  "from pretrain.export import load_into",
                  f"encoder = load_into(timm.create_model({model['encoder']!r}, num_classes=0{args}), {out!r})"]
    return "\n".join("    " + line for line in lines)


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
    except (OSError, ValueError) as exc:  # OSError: FileNotFoundError, NotWritableError, StorageError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = storage.resolve(args.out)
    print(f"wrote {out}: encoder {describe(meta)} from step {meta[META_STEP]} of {meta[META_SOURCE]}\n"
          f"load it with:\n{how_to_load(out, meta)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
