"""Exemplar-based inpainting (Criminisi, Pérez and Toyama, 2004): the classic patch method behind
"content-aware fill". It copies real texture from elsewhere in the image instead of smoothing
across the hole, which is what makes its fills hard to see.

Repeatedly: take the pixel on the fill front with the highest priority (how much of its patch is
known, times the strength of the image structure reaching it), find the fully known patch whose
known part matches best (sum of squared differences, searched within ``search`` pixels), and copy
that patch's pixels into the unknown part. Deterministic: the same image and mask give the same
fill.
"""

from __future__ import annotations

import cv2
import numpy as np


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
    confidence = original_known.astype(np.float32)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    three = np.ones((3, 3), np.uint8)
    unusable: dict[tuple[int, int], np.ndarray] = {}  # patch shape -> windows touching the hole
    while hole.any():
        known = (~hole).astype(np.uint8)
        front = hole & (cv2.dilate(known, three) > 0)
        ys, xs = np.nonzero(front)
        support = cv2.boxFilter(confidence, -1, (patch, patch), borderType=cv2.BORDER_CONSTANT)
        masked_gray = gray * known
        gx = cv2.Sobel(masked_gray, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(masked_gray, cv2.CV_32F, 0, 1)
        priority = support[ys, xs] * (np.hypot(gx[ys, xs], gy[ys, xs]) / 255.0 + 1e-3)
        best = int(np.argmax(priority))
        y, x = int(ys[best]), int(xs[best])
        y0, y1, x0, x1 = max(0, y - r), min(height, y + r + 1), max(0, x - r), min(width, x + r + 1)
        shape = (y1 - y0, x1 - x0)
        if shape not in unusable:
            known_f = original_known.astype(np.float32)
            inside = cv2.boxFilter(known_f, -1, shape[::-1], normalize=False, anchor=(0, 0),
                                   borderType=cv2.BORDER_CONSTANT)  # fmt: skip
            unusable[shape] = inside < shape[0] * shape[1] - 0.5
        weights = np.repeat((~hole[y0:y1, x0:x1]).astype(np.float32)[..., None], 3, -1)
        template = img[y0:y1, x0:x1]
        top, left = max(0, y0 - search), max(0, x0 - search)
        region = img[top : min(height, y1 + search), left : min(width, x1 + search)]
        cost = cv2.matchTemplate(region, template, cv2.TM_SQDIFF, mask=weights)
        cost[unusable[shape][top : top + cost.shape[0], left : left + cost.shape[1]]] = np.inf
        if not np.isfinite(cost).any():  # no whole known patch nearby: search everywhere
            top = left = 0
            cost = cv2.matchTemplate(img, template, cv2.TM_SQDIFF, mask=weights)
            cost[unusable[shape][: cost.shape[0], : cost.shape[1]]] = np.inf
        if not np.isfinite(cost).any():  # no whole known patch at all: fall back to diffusion
            fill = cv2.inpaint(image, hole.astype(np.uint8) * 255, 5, cv2.INPAINT_TELEA)
            img[hole] = fill[hole]
            break
        cy, cx = np.unravel_index(int(np.argmin(cost)), cost.shape)
        cy, cx = cy + top, cx + left
        todo = hole[y0:y1, x0:x1].copy()
        img[y0:y1, x0:x1][todo] = img[cy : cy + shape[0], cx : cx + shape[1]][todo]
        confidence[y0:y1, x0:x1][todo] = support[y, x]
        hole[y0:y1, x0:x1][todo] = False
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
