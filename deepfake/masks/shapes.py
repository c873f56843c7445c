"""The five mask shapes of the original project, and the registry of mask types. White (255) =
the region to inpaint.

The two diagonals of an image cut it into four half-image triangles; each diagonal mask covers one
of them, and its name says which half is white:

- ``diagonal_upper_left``:  above the anti-diagonal (bottom-left to top-right corner)
- ``diagonal_lower_right``: below the anti-diagonal (the complement of upper_left)
- ``diagonal_upper_right``: above the main diagonal (top-left to bottom-right corner)
- ``diagonal_lower_left``:  below the main diagonal (the complement of upper_right)

``random`` adds white rectangles (width W/16 to W/4, height H/16 to H/4) at random positions until
a coverage drawn from 40-60 % is reached, never going past 60 %. Its generator is seeded from
(mask seed, source id), so the same source and seed give the same mask, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deepfake.hashing import seed_of
from deepfake.masks.families import blob, brush, ellipse, freeform

RANDOM_COVERAGE = (0.40, 0.60)


def _centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y = (np.arange(height, dtype=np.float64)[:, None] + 0.5) / height
    x = (np.arange(width, dtype=np.float64)[None, :] + 0.5) / width
    return y, x


def diagonal_upper_left(
    height: int, width: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    y, x = _centres(height, width)
    return np.where(x + y < 1.0, 255, 0).astype(np.uint8)


def diagonal_lower_right(
    height: int, width: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    return 255 - diagonal_upper_left(height, width)


def diagonal_upper_right(
    height: int, width: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    y, x = _centres(height, width)
    return np.where(y < x, 255, 0).astype(np.uint8)


def diagonal_lower_left(
    height: int, width: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    return 255 - diagonal_upper_right(height, width)


def random_rectangles(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """White rectangles until a coverage drawn from [40 %, 60 %] is reached (never above 60 %)."""
    low, high = RANDOM_COVERAGE
    target = rng.uniform(low, high)
    mask = np.zeros((height, width), dtype=bool)
    total = height * width
    for _ in range(100_000):
        w = int(rng.integers(max(1, width // 16), max(2, width // 4) + 1))
        h = int(rng.integers(max(1, height // 16), max(2, height // 4) + 1))
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        trial = mask.copy()
        trial[y0 : y0 + h, x0 : x0 + w] = True
        if trial.sum() > high * total:
            continue  # this rectangle would overshoot 60 %: draw another
        mask = trial
        if mask.sum() >= target * total:
            break
    return np.where(mask, 255, 0).astype(np.uint8)


# A mask type: (height, width, generator seeded from the mask seed, source id and type) -> uint8
# HxW mask (the diagonals need no generator). The registry below: a new mask family is one
# module of such functions and its entries there.
MaskShape = Callable[[int, int, np.random.Generator], np.ndarray]

MASK_TYPES: dict[str, MaskShape] = {
    "diagonal_upper_left": diagonal_upper_left,
    "diagonal_upper_right": diagonal_upper_right,
    "diagonal_lower_left": diagonal_lower_left,
    "diagonal_lower_right": diagonal_lower_right,
    "random": random_rectangles,
    # The edits users meet: objects, strokes, free-form regions, 2-30 % of the image.
    "ellipse": ellipse,
    "blob": blob,
    "brush": brush,
    "freeform": freeform,
}
# The original project's five: what the first detector was trained and judged on.
ORIGINAL_TYPES = (
    "diagonal_upper_left",
    "diagonal_upper_right",
    "diagonal_lower_left",
    "diagonal_lower_right",
    "random",
)


def make_mask(mask_type: str, height: int, width: int, source_id: str, seed: int) -> np.ndarray:
    """The ``mask_type`` mask for one source: uint8 HxW, 255 = inpaint. The same arguments give
    the same mask, byte for byte."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask type {mask_type!r}; choose from {list(MASK_TYPES)}")
    rng = np.random.default_rng(seed_of(f"{seed}:{source_id}:{mask_type}", 8))
    return MASK_TYPES[mask_type](height, width, rng)
