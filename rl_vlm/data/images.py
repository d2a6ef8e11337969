"""Image loading and Qwen2.5-VL's resizing rule.

Qwen2.5-VL cuts an image into 14x14 patches and merges 2x2 patches into one visual token, so
both sides of the image it sees must be multiples of 28 and the number of visual tokens is
``(H/28) * (W/28)``. We resize once, here, to exactly the size the model's image processor would
pick, so the prompt length is known before rollout and vLLM and the HF processor (learner) see
identical pixels.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

from PIL import Image

FACTOR = 28
"""ViT patch (14) x spatial merge (2): every side of a resized image is a multiple of this."""
MIN_PIXELS = 4 * FACTOR * FACTOR
"""3136, Qwen2.5-VL's default lower bound on H*W (and :class:`ModelConfig`'s)."""
MAX_PIXELS = 16384 * FACTOR * FACTOR
"""12845056, Qwen2.5-VL's default upper bound on H*W (and :class:`ModelConfig`'s)."""
MAX_ASPECT_RATIO = 200
"""Qwen2.5-VL refuses images more elongated than this."""

ImageSpec = str | os.PathLike | bytes | bytearray | dict
"""How a row names an image: a path, raw encoded bytes, or ``{"path": ...}`` / ``{"bytes": ...}``."""


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The ``(height, width)`` Qwen2-VL/Qwen2.5-VL resize an image to.

    Each side is rounded to the nearest multiple of ``factor`` (at least ``factor``). If the area
    then exceeds ``max_pixels``, both sides are scaled down by ``sqrt(area / max_pixels)`` and
    floored to multiples; if it is below ``min_pixels``, both are scaled up by
    ``sqrt(min_pixels / area)`` and ceiled to multiples. The aspect ratio is kept approximately.

    Raises:
        ValueError: non-positive sides, ``min_pixels > max_pixels``, or an aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels={min_pixels} > max_pixels={max_pixels}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of a {height}x{width} image exceeds {MAX_ASPECT_RATIO}")
    # Python's round() rounds halves to even; the reference implementation uses it too, and
    # matching it exactly is the point (the processor must agree with our token count).
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def validate_image_spec(spec: Any) -> None:
    """Cheap structural check of an image spec (no file access); raises ValueError if malformed."""
    if isinstance(spec, dict):
        data, path = spec.get("bytes"), spec.get("path")
        if data is not None:
            if not isinstance(data, (bytes, bytearray)) or not data:
                raise ValueError("image dict has empty or non-bytes 'bytes'")
            return
        if isinstance(path, str) and path:
            return
        raise ValueError(f"image dict needs non-empty 'bytes' or 'path', has keys {sorted(spec)}")
    if isinstance(spec, (bytes, bytearray)):
        if not spec:
            raise ValueError("image bytes are empty")
        return
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if isinstance(spec, str):
        if not spec.strip():
            raise ValueError("image path is empty")
        return
    raise ValueError(f"image spec must be a path, bytes or a dict with 'path'/'bytes', got {type(spec).__name__}")


def load_image(spec: ImageSpec, base_dir: str | os.PathLike[str] = ".") -> Image.Image:
    """Decode an image to RGB.

    Args:
        spec: a path (relative paths resolve against ``base_dir``), encoded bytes, or a dict
            ``{"bytes": ...}`` / ``{"path": ...}`` as HF datasets store images in Parquet
            (``bytes`` wins when both are set).
        base_dir: directory of the data file the spec came from.

    Raises:
        ValueError: malformed spec. OSError (e.g. FileNotFoundError, PIL.UnidentifiedImageError)
        or other PIL errors when the file is missing or cannot be decoded.
    """
    validate_image_spec(spec)
    item: str | os.PathLike[str] | bytes | bytearray
    if isinstance(spec, dict):
        item = spec["bytes"] if spec.get("bytes") is not None else spec["path"]
    else:
        item = spec
    if isinstance(item, (bytes, bytearray)):
        source: Any = io.BytesIO(item)
    else:
        path = os.fspath(item)
        source = path if os.path.isabs(path) else os.path.join(os.fspath(base_dir), path)
    with Image.open(source) as img:
        # Decode now, so a truncated file fails here (and its row is skipped) rather than later
        # inside a rollout or learner worker; the context manager closes the file handle.
        img.load()
        return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of ``img``; transparent pixels become white rather than whatever colour the
    invisible pixels happen to store (often black), as Qwen's own loading utilities do."""
    has_alpha = "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def resize_image(img: Image.Image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``img`` resized (bicubic) to its :func:`smart_resize` size; returned as-is if already there."""
    h, w = smart_resize(img.height, img.width, min_pixels=min_pixels, max_pixels=max_pixels)
    if (w, h) == img.size:
        return img
    return img.resize((w, h), Image.Resampling.BICUBIC)


def num_visual_tokens(img_size: tuple[int, int], merge: int = 2, patch: int = 14) -> int:
    """Visual tokens of an already-resized image: one per ``(merge*patch)``-pixel square.

    ``img_size`` is PIL's ``(width, height)`` (the product does not care about the order).
    Raises ValueError if a side is not a multiple of ``merge * patch`` (the image was not resized).
    """
    block = merge * patch
    w, h = img_size
    if w <= 0 or h <= 0 or w % block or h % block:
        raise ValueError(f"image size {w}x{h} is not a positive multiple of {block}; resize it first")
    return (h // block) * (w // block)
