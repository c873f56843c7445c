"""Mask families of the edits users meet, beside the original project's five shapes: objects
(ellipses, blobs), brush strokes and free-form regions, each covering 2 to 30 % of the image.

Every function takes the mask's size and a seeded generator and returns a uint8 mask (255 = fill);
the area is drawn uniformly from ``AREA`` and reached within a few percent.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

AREA = (0.02, 0.30)


def _cover(mask: np.ndarray) -> float:
    return float((mask > 0).mean())


def _add_until_covered(
    mask: np.ndarray, target: float, draw: Callable[[np.ndarray], None]
) -> np.ndarray:
    """Draw shapes onto copies of ``mask`` (up to 50), keeping each one that leaves the area
    within ``AREA``, until ``target`` is covered."""
    for _ in range(50):
        trial = mask.copy()
        draw(trial)
        if _cover(trial) > AREA[1]:
            continue
        mask = trial
        if _cover(mask) >= target:
            break
    return mask


def ellipse(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One to a few ellipses of any orientation (an object's outline), until the area is met."""
    target = rng.uniform(*AREA)

    def draw(trial: np.ndarray) -> None:
        a = rng.uniform(0.25, 1.0) * np.sqrt(target * height * width / np.pi)
        b = a * rng.uniform(0.4, 1.0)
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (max(1, round(a)), max(1, round(b)))
        cv2.ellipse(trial, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)

    return _add_until_covered(np.zeros((height, width), np.uint8), target, draw)


def blob(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An irregular, smooth-edged object: a star-shaped polygon of random radii, smoothed, scaled
    to the target area."""
    target = rng.uniform(*AREA)
    n = int(rng.integers(6, 14))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.6, 1.4, n)
    centre = rng.uniform(0.25, 0.75, 2) * (width, height)
    mask = np.zeros((height, width), np.uint8)
    scale = np.sqrt(target * height * width / np.pi)
    for _ in range(4):  # the smoothed polygon's area differs from a circle's: correct the scale
        points = centre + scale * radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
        mask[:] = 0
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255)
        kernel = max(3, int(scale / 3) | 1)
        mask = np.where(cv2.GaussianBlur(mask, (kernel, kernel), 0) > 127, 255, 0).astype(np.uint8)
        covered = _cover(mask)
        if covered == 0 or abs(covered - target) < 0.1 * target:
            break
        scale *= np.sqrt(target / covered)
    return mask if mask.any() else ellipse(height, width, rng)  # a polygon folded onto itself


def brush(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Thick brush strokes (polylines of a few segments), until the area is met."""
    target = rng.uniform(*AREA)

    def draw(trial: np.ndarray) -> None:
        thickness = int(rng.integers(max(2, width // 32), max(3, width // 10) + 1))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        points = [(x, y)]
        for _ in range(int(rng.integers(2, 6))):
            angle, step = rng.uniform(0, 2 * np.pi), rng.uniform(width / 10, width / 4)
            x = float(np.clip(x + step * np.cos(angle), 0, width - 1))
            y = float(np.clip(y + step * np.sin(angle), 0, height - 1))
            points.append((x, y))
        cv2.polylines(trial, [np.round(points).astype(np.int32)], False, 255, thickness)

    return _add_until_covered(np.zeros((height, width), np.uint8), target, draw)


def freeform(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An organic, cloud-like region (or several): the top of a smooth random field."""
    target = rng.uniform(*AREA)
    noise = rng.normal(size=(max(2, height // 16), max(2, width // 16))).astype(np.float32)
    field = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), width / 24)
    return np.where(field >= np.quantile(field, 1 - target), 255, 0).astype(np.uint8)
