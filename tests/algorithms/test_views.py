"""TileBlackening, the masked/perturbed image of PAPO (algorithms.md §2.2) and VPPO (§3.2)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from rl_vlm.algorithms.views import TileBlackening


def _random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    # 1..255 so that a pixel is 0 only where a tile was blackened.
    pixels = rng.integers(1, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)


def _authors_loop(image: Image.Image, rng: np.random.Generator, patch_size: int, prob: float) -> Image.Image:
    """The authors' ``random_patch_blackening`` (PAPO ``papo_utils.py``, VPPO ``perc_utils.py``)
    transcribed for the test, with ``np.random.rand()`` replaced by the seeded generator."""
    img = np.array(image).astype(np.float32)
    h, w = img.shape[:2]
    for y in range(0, h, patch_size):
        for x in range(0, w, patch_size):
            if rng.random() < prob:
                img[y:min(y + patch_size, h), x:min(x + patch_size, w), ...] = 0
    return Image.fromarray(img.astype(np.uint8))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("size", [(30, 20), (28, 14), (13, 41)])
def test_matches_the_authors_loop_with_the_same_draws(mode: str, size: tuple[int, int]) -> None:
    image = _random_image(*size, mode=mode)
    ours = TileBlackening(patch_size=14, prob=0.6)(image, np.random.default_rng(7))
    theirs = _authors_loop(image, np.random.default_rng(7), 14, 0.6)
    assert ours.size == image.size and ours.mode == image.mode
    np.testing.assert_array_equal(np.array(ours), np.array(theirs))


def test_tiles_are_anchored_at_the_origin_and_truncated_at_the_edges() -> None:
    image = _random_image(30, 20)  # 3 x 2 tiles: columns 0-13, 14-27, 28-29; rows 0-13, 14-19
    transform = TileBlackening(patch_size=14, prob=0.5)
    tiles = transform.tile_mask(20, 30, np.random.default_rng(3))
    assert tiles.shape == (2, 3)
    out = np.array(transform(image, np.random.default_rng(3)))
    edges_y, edges_x = [(0, 14), (14, 20)], [(0, 14), (14, 28), (28, 30)]
    for r, (y0, y1) in enumerate(edges_y):
        for c, (x0, x1) in enumerate(edges_x):
            block = out[y0:y1, x0:x1]
            if tiles[r, c]:
                assert (block == 0).all()  # all channels
            else:
                np.testing.assert_array_equal(block, np.array(image)[y0:y1, x0:x1])
    assert tiles.any() and not tiles.all()  # the seed exercises both cases


def test_probability_bounds_and_alpha() -> None:
    image = _random_image(20, 17, mode="RGBA")
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(np.array(TileBlackening(prob=0.0)(image, rng)), np.array(image))
    black = np.array(TileBlackening(prob=1.0)(image, rng))  # the all-masked image
    assert black.shape == (17, 20, 4) and (black == 0).all()


def test_palette_images_are_blackened_in_colour_space() -> None:
    image = _random_image(16, 16).convert("P")
    out = TileBlackening(prob=1.0)(image, np.random.default_rng(0))
    assert out.mode == "RGB" and (np.array(out) == 0).all()


def test_seeded_reproducibility_and_picklable() -> None:
    image = _random_image(64, 48)
    transform = TileBlackening(patch_size=14, prob=0.6)
    a = np.array(transform(image, np.random.default_rng(11)))
    b = np.array(pickle.loads(pickle.dumps(transform))(image, np.random.default_rng(11)))
    c = np.array(transform(image, np.random.default_rng(12)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(np.array(image), np.array(_random_image(64, 48)))  # input untouched


def test_blackened_fraction_tracks_the_probability() -> None:
    tiles = TileBlackening(patch_size=14, prob=0.6).tile_mask(1400, 1400, np.random.default_rng(0))
    assert tiles.shape == (100, 100) and abs(tiles.mean() - 0.6) < 0.02


@pytest.mark.parametrize("kwargs", [{"patch_size": 0}, {"prob": -0.1}, {"prob": 1.5}])
def test_bad_parameters_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TileBlackening(**kwargs)  # type: ignore[arg-type]
