"""Image encoding for the builders and fast decoding for the streams (PIL only).

Builders keep pixels exact where that matters (PNG for CIFAR-10/STL-10), convert every oddity of
real archives (CMYK, grayscale, palette, PNG data named ``.JPEG``) to RGB instead of dropping it, and
raise :class:`BadImage` for an empty, truncated or undecodable file so the caller can skip and name it.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile

# Truncated files must fail loudly, never decode to half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False

EXTENSIONS = {"png": "PNG", "jpg": "JPEG"}


class BadImage(ValueError):
    """An input image that cannot be decoded; the message says why."""


def open_fully(data: bytes) -> Image.Image:
    """Decode ``data`` completely (catching truncation); :class:`BadImage` with the reason otherwise."""
    if len(data) == 0:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad data
        raise BadImage(f"cannot decode ({type(e).__name__}: {e})".replace("\n", " ")) from None
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use 'png' or 'jpg'")
    return buf.getvalue()


def encode_array(array: np.ndarray, fmt: str = "png", quality: int = 95,
                 resize: int | None = None) -> bytes:
    """Encode a uint8 RGB array [H, W, 3] as PNG (lossless) or JPEG; optionally squash to resize²."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] array, got {array.dtype} {array.shape}")
    img = Image.fromarray(array, "RGB")
    if resize:
        img = img.resize((resize, resize), Image.BILINEAR)
    return _encode(img, fmt, quality)


def encode_file_bytes(data: bytes, fmt: str = "jpg", quality: int = 95,
                      resize: int | None = None) -> bytes:
    """Re-encode the bytes of an image file for a shard, or keep them when already right.

    A plain RGB JPEG stored as ``jpg`` without resizing is kept byte for byte (no second lossy
    pass); everything else (CMYK, grayscale, PNG, resize) is decoded, converted to RGB and encoded.
    Raises :class:`BadImage` for empty, truncated or undecodable data.
    """
    img = open_fully(data)
    if fmt == "jpg" and img.format == "JPEG" and img.mode == "RGB" and not resize:
        return data
    img = _to_rgb(img)
    if resize:
        img = img.resize((resize, resize), Image.BILINEAR)
    return _encode(img, fmt, quality)


def decode_rgb(data: bytes, draft: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image (raises on bad data).

    ``draft``: for JPEG, let libjpeg decode at a reduced scale that still has both sides ≥ draft;
    this is what makes full-size ImageNet files cheap to turn into 292×292 inputs.
    """
    img = Image.open(io.BytesIO(data))
    if draft and img.format == "JPEG":
        img.draft("RGB", (draft, draft))
    img.load()
    return _to_rgb(img)


def decode_resized(data: bytes, size: int) -> np.ndarray:
    """Decode and squash to [size, size, 3] uint8 (aspect ratio not kept, as the jigsaw task does)."""
    img = decode_rgb(data, draft=size)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img)
