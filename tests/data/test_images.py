"""Qwen2.5-VL smart resize (hand-computed sizes), image loading from every spec form, token counts."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from PIL import Image

from rl_vlm.data.images import (
    load_image,
    num_visual_tokens,
    resize_image,
    smart_resize,
    validate_image_spec,
)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- smart_resize
@pytest.mark.parametrize("h, w, kwargs, expected", [
    # round(64/28) = 2 -> 56; 56*56 = 3136 is exactly min_pixels.
    (64, 64, dict(min_pixels=3136), (56, 56)),
    # 56*56 = 3136 < 12544: beta = sqrt(12544/4096) = 1.75; 64*1.75 = 112 = 4*28 (ceil keeps it).
    (64, 64, dict(min_pixels=12544), (112, 112)),
    # Already a multiple of 28 and within bounds: unchanged.
    (280, 560, dict(), (280, 560)),
    # max_pixels = 400*784: rounded 2240x1680 is 12x too big, beta = sqrt(12) = 3.4641;
    # 2240/3.4641/28 = 23.09 -> 23*28 = 644; 1680/3.4641/28 = 17.32 -> 17*28 = 476.
    (2240, 1680, dict(max_pixels=313600), (644, 476)),
    # max_pixels = 256*784: beta = sqrt(2e6/200704) = 3.1567; 1000/beta/28 = 11.31 -> 308;
    # 2000/beta/28 = 22.63 -> 616.
    (1000, 2000, dict(max_pixels=200704), (308, 616)),
    # Thin: round(10/28) = 0 -> at least 28; round(1000/28) = round(35.71) = 36 -> 1008.
    (10, 1000, dict(), (28, 1008)),
    # Small and 2:5: rounded 28x56 = 1568 < 3136; beta = sqrt(3136/1000) = 1.7709;
    # 20*beta/28 = 1.26 -> ceil 2 -> 56; 50*beta/28 = 3.16 -> ceil 4 -> 112.
    (20, 50, dict(min_pixels=3136), (56, 112)),
    # Aspect ratio exactly 200 is allowed: 28 x round(200/28)=7 -> 196; 28*196 = 5488 >= 3136.
    (1, 200, dict(), (28, 196)),
    # A half rounds to even, as Python's round (and the reference implementation) does: 70/28 = 2.5 -> 2.
    (70, 98, dict(min_pixels=1), (56, 112)),
])
def test_smart_resize_hand_computed(h: int, w: int, kwargs: dict, expected: tuple[int, int]) -> None:
    assert smart_resize(h, w, **kwargs) == expected


@pytest.mark.parametrize("h, w", [(1, 201), (300, 1), (0, 10), (10, -5)])
def test_smart_resize_rejects(h: int, w: int) -> None:
    with pytest.raises(ValueError):
        smart_resize(h, w)


def test_smart_resize_rejects_inverted_bounds() -> None:
    with pytest.raises(ValueError, match="min_pixels"):
        smart_resize(64, 64, min_pixels=10_000, max_pixels=5_000)


def test_smart_resize_invariants_and_reference() -> None:
    """Multiples of 28, within the bounds, aspect ratio kept; and identical to the HF reference.

    transformers' copy of the rule skips the "at least ``factor``" clamp of the first rounding
    (qwen-vl-utils has it), so the two differ only when a side is under 14 px; compare above that.
    """
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
        smart_resize as reference,
    )

    lo, hi = 3136, 200_704
    for h in (5, 13, 28, 57, 64, 99, 200, 333, 640, 1080, 2001):
        for w in (17, 28, 64, 77, 150, 480, 720, 1920, 3000):
            if max(h, w) / min(h, w) > 200:
                continue
            rh, rw = smart_resize(h, w, min_pixels=lo, max_pixels=hi)
            assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
            assert lo <= rh * rw <= hi, (h, w, rh, rw)
            if min(h, w) >= 56 and min(rh, rw) >= 56:  # both sides resolved well enough to compare
                assert abs(math.log((rh / rw) / (h / w))) < 0.5, (h, w, rh, rw)
            if min(h, w) >= 14:
                assert (rh, rw) == tuple(reference(h, w, factor=28, min_pixels=lo, max_pixels=hi)), (h, w)


# ----------------------------------------------------------------------------- load_image
@pytest.fixture()
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "imgs" / "red.png"
    path.parent.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(path)
    return path


def test_load_image_from_paths(image_file: Path, tmp_path: Path) -> None:
    for spec, base in [("imgs/red.png", tmp_path), (str(image_file), "/nonexistent"), (image_file, "."),
                       ({"path": "imgs/red.png"}, str(tmp_path)), ({"path": "imgs/red.png", "bytes": None}, tmp_path)]:
        img = load_image(spec, base)
        assert img.mode == "RGB" and img.size == (40, 30) and img.getpixel((0, 0)) == (255, 0, 0), spec


def test_load_image_from_bytes(image_file: Path) -> None:
    data = image_file.read_bytes()
    for spec in [data, bytearray(data), {"bytes": data}, {"bytes": data, "path": "ignored-when-bytes-are-set.png"}]:
        img = load_image(spec)
        assert img.mode == "RGB" and img.size == (40, 30) and img.getpixel((5, 5)) == (255, 0, 0)


def test_load_image_converts_modes() -> None:
    gray = load_image(png_bytes(Image.new("L", (8, 8), 100)))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (100, 100, 100)
    # Fully transparent pixels become white, not the (black) colour they store.
    rgba = load_image(png_bytes(Image.new("RGBA", (8, 8), (0, 0, 0, 0))))
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (255, 255, 255)
    opaque = load_image(png_bytes(Image.new("RGBA", (8, 8), (10, 20, 30, 255))))
    assert opaque.getpixel((0, 0)) == (10, 20, 30)
    palette = load_image(png_bytes(Image.new("RGB", (8, 8), (0, 0, 255)).convert("P")))
    assert palette.mode == "RGB" and palette.getpixel((0, 0)) == (0, 0, 255)


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_image("missing.png", tmp_path)
    with pytest.raises(OSError):  # PIL.UnidentifiedImageError
        load_image(b"definitely not an image")
    truncated = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60]
    with pytest.raises(Exception):
        load_image(truncated)
    for bad in [{"url": "x"}, {"bytes": b""}, {"path": ""}, "", b"", 42, None, ["a.png"]]:
        with pytest.raises(ValueError):
            validate_image_spec(bad)
        with pytest.raises(ValueError):
            load_image(bad, tmp_path)


# ----------------------------------------------------------------------------- resize / tokens
def test_resize_image() -> None:
    img = Image.new("RGB", (64, 64), (0, 255, 0))  # PIL sizes are (width, height)
    small = resize_image(img, min_pixels=3136, max_pixels=12845056)
    assert small.size == (56, 56) and small.getpixel((10, 10)) == (0, 255, 0)
    big = resize_image(Image.new("RGB", (50, 20)), min_pixels=3136, max_pixels=12845056)
    assert big.size == (112, 56)  # smart_resize(h=20, w=50) = (56, 112)
    same = Image.new("RGB", (84, 56))
    assert resize_image(same, 3136, 12845056) is same  # already a valid size: no copy


def test_num_visual_tokens() -> None:
    assert num_visual_tokens((56, 56)) == 4
    assert num_visual_tokens((112, 56)) == 8
    assert num_visual_tokens((644, 476)) == 23 * 17
    assert num_visual_tokens((32, 64), merge=2, patch=16) == 2
    with pytest.raises(ValueError):
        num_visual_tokens((64, 64))  # not resized
