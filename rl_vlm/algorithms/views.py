"""Image transforms for the algorithms' extra views (:class:`~rl_vlm.algorithms.base.ViewSpec`).

Only :class:`TileBlackening` for now: PAPO's masked image (algorithms.md §2.2) and VPPO's
perturbed image (§3.2) are the same transform with different probabilities.

numpy and PIL are imported inside the call, so importing this module (and the algorithms that
build their views from it) needs nothing beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image


@dataclass(frozen=True)
class TileBlackening:
    """Random square-tile blackening, the authors' ``random_patch_blackening`` (§2.2, §3.2).

    The image is tiled with ``patch_size`` × ``patch_size`` squares anchored at (0, 0); tiles at
    the right and bottom edges are truncated to the image. Each tile is set to 0 in every channel
    (alpha included, as the authors' array assignment does) independently with probability
    ``prob``. One uniform draw per tile, in row-major order (top row first, left to right), as
    the authors' nested loop draws them: ``rng.random((rows, cols))`` consumes the generator's
    stream in exactly that order. The size and mode are unchanged, so the visual-token count is
    too.

    The authors draw from numpy's global RNG; here the framework passes a seeded generator,
    which makes masks reproducible per (step, prompt[, response]).

    A frozen dataclass rather than a closure so that views pickle (Ray) and compare equal.
    """

    patch_size: int = 14
    prob: float = 0.6

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {self.prob}")

    def tile_mask(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """``[rows, cols]`` bool: True for the tiles to blacken (rows = ceil(height / patch))."""
        rows = -(-height // self.patch_size)
        cols = -(-width // self.patch_size)
        # Strict "<", as the authors' `np.random.rand() < black_prob`: prob 0 never blackens.
        return rng.random((rows, cols)) < self.prob

    def __call__(self, image: Image, rng: np.random.Generator) -> Image:
        import numpy as np
        from PIL import Image as PILImage

        # Palette images store indices, where 0 need not be black; blacken real colours instead.
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA" if image.mode == "PA" else "RGB")
        width, height = image.size
        tiles = self.tile_mask(height, width, rng)
        # Expand the tile grid to pixels; edge tiles are cut by the final slice.
        per_pixel = tiles.repeat(self.patch_size, axis=0).repeat(self.patch_size, axis=1)[:height, :width]
        mask = PILImage.fromarray(per_pixel.astype(np.uint8) * 255)
        # Image.new fills every channel with 0; compositing keeps the input's mode exactly.
        return PILImage.composite(PILImage.new(image.mode, image.size), image, mask)


__all__ = ["TileBlackening"]
