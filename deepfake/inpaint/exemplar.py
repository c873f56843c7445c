"""Exemplar-based inpainting (Criminisi, Pérez and Toyama, 2004): the classic patch method behind
"content-aware fill". It copies real texture from elsewhere in the image instead of smoothing
across the hole, which is what makes its fills hard to see.

Repeatedly: take the pixel on the fill front with the highest priority (how much of its patch is
known, times the strength of the image structure reaching it), find the fully known patch whose
known part matches best (sum of squared differences, searched within ``search`` pixels), and copy
that patch's pixels into the unknown part. Deterministic: the same image and mask give the same
fill.

Copying one patch changes priorities only near it, so they are kept in an image and recomputed
in that neighbourhood alone. For the local result to equal a whole-image recomputation bit for
bit, every quantity is computed exactly: confidences are fixed-point integers (sums of them in
float64 are exact in any order), the isophote is a Sobel filter of whole grey levels. The
structure term reads the grey levels of the image as filled so far, never what the mask hid.
"""

from __future__ import annotations

import cv2
import numpy as np

ONE = float(1 << 20)  # a confidence of 1.0 in fixed point


class _Priorities:
    """Criminisi's priorities (confidence term times data term) of the fill front, kept up to
    date as the hole shrinks."""

    def __init__(self, hole: np.ndarray, gray: np.ndarray, patch: int) -> None:
        self.hole, self.gray, self.patch, self.r = hole, gray, patch, patch // 2
        h, w = hole.shape
        # Confidence with a zero border of r pixels, so that every window sum is a plain slice.
        self.confidence = np.zeros((h + 2 * self.r, w + 2 * self.r), np.float64)
        self.confidence[self.r : self.r + h, self.r : self.r + w] = np.where(hole, 0.0, ONE)
        self.values = np.full((h, w), -np.inf)
        self.update(0, h, 0, w)

    def support(self, y: int, x: int) -> float:
        """Sum of the confidences in the patch centred on (y, x), in fixed point."""
        p = self.patch
        return float(self.confidence[y : y + p, x : x + p].sum())

    def update(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Recompute the priorities of the pixels in rows y0:y1 and columns x0:x1."""
        h, w = self.hole.shape
        r, p = self.r, self.patch
        sums = cv2.boxFilter(self.confidence[y0 : y1 + 2 * r, x0 : x1 + 2 * r], -1, (p, p),
                             normalize=False, borderType=cv2.BORDER_CONSTANT)  # fmt: skip
        sums = sums[r : r + y1 - y0, r : r + x1 - x0]
        # Front and gradient need one pixel around the block: take it where the image has it.
        a0, a1, b0, b1 = max(0, y0 - 1), min(h, y1 + 1), max(0, x0 - 1), min(w, x1 + 1)
        hole = self.hole[a0:a1, b0:b1]
        known = (~hole).astype(np.uint8)
        near_known = cv2.dilate(known, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                                borderValue=0) > 0  # fmt: skip
        gray = self.gray[a0:a1, b0:b1]
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1)
        inner = (slice(y0 - a0, y0 - a0 + y1 - y0), slice(x0 - b0, x0 - b0 + x1 - x0))
        front = (hole & near_known)[inner]
        data = np.hypot(gx[inner], gy[inner]).astype(np.float64) / 255.0 + 1e-3
        self.values[y0:y1, x0:x1] = np.where(front, sums / (p * p * ONE) * data, -np.inf)

    def fill(self, y0: int, y1: int, x0: int, x1: int, todo: np.ndarray, level: float) -> None:
        """Mark ``todo`` of the block as known with confidence ``level`` and refresh around it."""
        h, w = self.hole.shape
        r = self.r
        self.confidence[y0 + r : y1 + r, x0 + r : x1 + r][todo] = level
        self.update(max(0, y0 - r), min(h, y1 + r), max(0, x0 - r), min(w, x1 + r))


def exemplar_fill(
    image: np.ndarray, mask: np.ndarray, patch: int = 9, search: int = 40
) -> np.ndarray:
    """Fill the pixels where ``mask`` > 127 of the RGB uint8 ``image``; pixels outside the mask
    are returned unchanged."""
    img = image.astype(np.float32)
    hole = mask > 127
    original_known = ~hole
    height, width = hole.shape
    r = patch // 2
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray[hole] = 0.0  # what the mask hides is never read
    priorities = _Priorities(hole, gray, patch)
    unusable: dict[tuple[int, int], np.ndarray] = {}  # patch shape -> windows touching the hole
    remaining = int(hole.sum())
    while remaining:
        best = int(np.argmax(priorities.values))
        y, x = divmod(best, width)
        if not np.isfinite(priorities.values[y, x]):  # nothing known to grow from
            return _diffuse(image, img, hole)
        y0, y1, x0, x1 = max(0, y - r), min(height, y + r + 1), max(0, x - r), min(width, x + r + 1)
        shape = (y1 - y0, x1 - x0)
        if shape not in unusable:
            known_f = original_known.astype(np.float32)
            inside = cv2.boxFilter(known_f, -1, shape[::-1], normalize=False, anchor=(0, 0),
                                   borderType=cv2.BORDER_CONSTANT)  # fmt: skip
            unusable[shape] = inside < shape[0] * shape[1] - 0.5
        weights = (~hole[y0:y1, x0:x1]).astype(np.float32)
        template = img[y0:y1, x0:x1]
        top, left = max(0, y0 - search), max(0, x0 - search)
        region = img[top : min(height, y1 + search), left : min(width, x1 + search)]
        cost = _masked_ssd(region, template, weights)
        cost[unusable[shape][top : top + cost.shape[0], left : left + cost.shape[1]]] = np.inf
        if not np.isfinite(cost).any():  # no whole known patch nearby: search everywhere
            top = left = 0
            cost = _masked_ssd(img, template, weights)
            cost[unusable[shape][: cost.shape[0], : cost.shape[1]]] = np.inf
        if not np.isfinite(cost).any():  # no whole known patch at all
            return _diffuse(image, img, hole)
        cy, cx = np.unravel_index(int(np.argmin(cost)), cost.shape)
        cy, cx = cy + top, cx + left
        todo = hole[y0:y1, x0:x1].copy()
        img[y0:y1, x0:x1][todo] = img[cy : cy + shape[0], cx : cx + shape[1]][todo]
        gray[y0:y1, x0:x1][todo] = gray[cy : cy + shape[0], cx : cx + shape[1]][todo]
        hole[y0:y1, x0:x1][todo] = False
        remaining -= int(todo.sum())
        level = float(np.floor(priorities.support(y, x) / (patch * patch)))
        priorities.fill(y0, y1, x0, x1, todo, level)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _masked_ssd(region: np.ndarray, template: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For every placement of ``template`` (h x w x 3) inside ``region``, the sum of squared
    differences over the template pixels where ``weights`` (h x w, 0 or 1) is 1: what
    ``cv2.matchTemplate(..., TM_SQDIFF, mask=...)`` computes, as
    sum(w * region^2) - 2 sum(w * template * region) + sum(w * template^2), about four times
    faster for patches this small. Whole-number pixels give whole-number costs, exact while the
    terms stay below 2**24 (float32)."""
    h, w = weights.shape
    out = (region.shape[0] - h + 1, region.shape[1] - w + 1)

    def correlate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        full = cv2.filter2D(image, -1, kernel, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
        return full[: out[0], : out[1]]

    squares = cv2.transform(region * region, np.ones((1, 3), np.float32))
    weighted = template * weights[..., None]
    cross = sum(correlate(np.ascontiguousarray(region[..., c]), weighted[..., c]) for c in range(3))
    return correlate(squares, weights) - 2.0 * cross + float((weighted * template).sum())


def _diffuse(image: np.ndarray, img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The rest of the hole by diffusion, where no known patch is left to copy."""
    fill = cv2.inpaint(image, hole.astype(np.uint8) * 255, 5, cv2.INPAINT_TELEA)
    img[hole] = fill[hole]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
