"""Image loading and Qwen2.5-VL's resizing rule."""

from __future__ import annotations

import io
import math
import os
from typing import Any

from PIL import Image

FACTOR = 28
"""ViT patch (14) x spatial merge (2): every side must be a multiple of this."""


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """(h, w) with both sides multiples of ``factor``, close to the original aspect ratio, and
    ``min_pixels <= h*w <= max_pixels`` (Qwen2-VL/Qwen2.5-VL's rule)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds 200")
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


def load_image(spec: Any, base_dir: str = ".") -> Image.Image:
    """An RGB image from a path (relative to ``base_dir``), ``{"path": ...}``, ``{"bytes": ...}`` or bytes."""
    if isinstance(spec, dict):
        if spec.get("bytes") is not None:
            spec = spec["bytes"]
        elif spec.get("path"):
            spec = spec["path"]
        else:
            raise ValueError("image dict has neither 'bytes' nor 'path'")
    if isinstance(spec, (bytes, bytearray)):
        img = Image.open(io.BytesIO(spec))
    elif isinstance(spec, str):
        path = spec if os.path.isabs(spec) else os.path.join(base_dir, spec)
        img = Image.open(path)
    else:
        raise ValueError(f"unsupported image spec of type {type(spec).__name__}")
    img.load()
    return img.convert("RGB")


def resize_image(img: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    h, w = smart_resize(img.height, img.width, min_pixels=min_pixels, max_pixels=max_pixels)
    return img if (h, w) == (img.height, img.width) else img.resize((w, h), Image.BICUBIC)


def num_visual_tokens(size: tuple[int, int]) -> int:
    """Visual tokens of a resized (w, h) image: one per 28x28 block after the 2x2 merge."""
    w, h = size
    return (h // FACTOR) * (w // FACTOR)
