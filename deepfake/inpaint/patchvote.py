"""Patch-voting inpainting (Wexler, Shechtman and Irani, 2007; the fill behind PatchMatch and the
"content-aware fill" of photo editors): coarse to fine, every patch that overlaps the hole is
matched to its nearest fully known patch of the image, and each hole pixel becomes the average of
the matched patches that cover it. Unlike exemplar fill (which pastes whole patches), the votes
blend overlapping copies, so the region holds no exact copy of anything.

Deterministic: the same image and mask give the same fill. Pure numpy and OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _nearest(targets: np.ndarray, sources: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Index of each target row's nearest source row (squared Euclidean distance)."""
    source_norms = (sources**2).sum(1)
    out = np.empty(len(targets), np.int64)
    for start in range(0, len(targets), chunk):
        part = targets[start : start + chunk]
        distances = source_norms[None, :] - 2.0 * part @ sources.T
        out[start : start + chunk] = distances.argmin(1)
    return out


def _vote(
    image: np.ndarray, hole: np.ndarray, patch: int, iterations: int, stride: int
) -> np.ndarray:
    """Refine the hole of float32 ``image`` (HxWx3) by nearest-patch voting at one scale."""
    height, width = hole.shape
    r = patch // 2
    if height < patch + 2 or width < patch + 2:
        return image
    # Windows (top-left corners) that touch the hole, and those entirely outside it.
    touched = cv2.dilate(hole.astype(np.uint8), np.ones((patch, patch), np.uint8)) > 0
    inside = touched[r : height - r, r : width - r]
    clean = ~inside
    ys, xs = np.nonzero(clean)
    keep = (ys % stride == 0) & (xs % stride == 0)
    if keep.sum() < 4:
        keep[:] = True
    src_y, src_x = ys[keep], xs[keep]
    ty, tx = np.nonzero(inside)
    if len(src_y) == 0 or len(ty) == 0:
        return image
    tkeep = (ty % stride == 0) & (tx % stride == 0)
    ty, tx = ty[tkeep], tx[tkeep]
    out = image.copy()
    for _ in range(iterations):
        windows = sliding_window_view(out, (patch, patch, 3))[:, :, 0]  # (H-p+1, W-p+1, p, p, 3)
        sources = windows[src_y, src_x].reshape(len(src_y), -1)
        targets = windows[ty, tx].reshape(len(ty), -1)
        match = _nearest(targets, sources)
        total = np.zeros_like(out)
        count = np.zeros(hole.shape, np.float32)
        chosen = windows[src_y[match], src_x[match]]  # (T, p, p, 3)
        # The targets are distinct pixels, so one shift never hits a pixel twice: plain indexed
        # adds, not np.add.at (the same sums, several times faster).
        for dy in range(patch):
            for dx in range(patch):
                total[ty + dy, tx + dx] += chosen[:, dy, dx]
                count[ty + dy, tx + dx] += 1.0
        voted = hole & (count > 0)
        out[voted] = total[voted] / count[voted][:, None]
    return out


def patch_vote_fill(
    image: np.ndarray, mask: np.ndarray, patch: int = 5, levels: int = 3, iterations: int = 3
) -> np.ndarray:
    """Fill the pixels where ``mask`` > 127 of the RGB uint8 ``image``; pixels outside the mask
    are returned unchanged."""
    hole = mask > 127
    if not hole.any():
        return image.copy()
    pyramid = [(image.astype(np.float32), hole)]
    for _ in range(levels - 1):
        img, h = pyramid[-1]
        if min(h.shape) < 4 * patch:
            break
        smaller = cv2.pyrDown(img)
        holes = cv2.resize(h.astype(np.uint8), smaller.shape[1::-1], interpolation=cv2.INTER_AREA)
        pyramid.append((smaller, holes > 0))
    coarse, coarse_hole = pyramid[-1]
    start = cv2.inpaint(np.clip(coarse + 0.5, 0, 255).astype(np.uint8),
                        coarse_hole.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)  # fmt: skip
    filled = _vote(start.astype(np.float32), coarse_hole, patch, iterations, stride=1)
    for img, h in reversed(pyramid[:-1]):
        up = cv2.resize(filled, img.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        current = np.where(h[..., None], up, img)
        filled = _vote(current, h, patch, iterations, stride=2)
    out = image.copy()
    out[hole] = np.clip(filled[hole] + 0.5, 0, 255).astype(np.uint8)
    return out
