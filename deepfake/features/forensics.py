"""Forensic maps that need no training, pooled over the detector's cells.

- **Copies**: a region filled by copying patches (exemplar inpainting, content-aware fill) is made
  of exact copies of pixels found elsewhere in the same image; a natural photo almost never
  repeats a textured patch exactly. ``duplicate_map`` marks the pixels covered by a small,
  textured patch that also appears, unchanged, at least ``min_offset`` pixels away.
- **Noise and texture**: a fill is smoother than the camera noise and texture around it, whatever
  made it. ``residual_energy`` is the size of the image's second derivative, the finest band,
  where that noise lives; ``band_energy`` the size of the next band (a difference of Gaussians),
  which survives JPEG and resizing better.

``forensic_cells`` pools them over a grid of cells, the residual and the band also relative to
the image's own median (a smooth cell in a textured image is the anomaly, not a smooth image).

Exact copies do not survive JPEG. A copy search that tolerates JPEG's changes (near-duplicates
of 4x4 and 8x8 windows within JPEG-noise distance) was measured on the sample tiles and not kept:
at any tolerance that still finds JPEG-compressed copies, real images' own textures hold more
near-duplicates than exemplar fills do (README "Detector").
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FORENSIC_CHANNELS = ("copies_mean", "copies_max", "residual", "residual_vs_image", "band",
                     "band_vs_image")  # fmt: skip


def duplicate_map(
    image: np.ndarray,
    patch: int = 4,
    min_std: float = 3.0,
    min_gradient: float = 0.5,
    min_offset: int = 8,
) -> np.ndarray:
    """1.0 where the pixel lies in a ``patch`` x ``patch`` window whose exact pixels also occur at
    least ``min_offset`` pixels away; else 0.0 (float32 HxW). Only textured windows count: std
    above ``min_std`` and a mean absolute step above ``min_gradient`` both across and down, so
    that a straight edge between flat areas (every window along it is the same) is no copy."""
    height, width, channels = image.shape
    windows = sliding_window_view(np.ascontiguousarray(image), (patch, patch, channels))[:, :, 0]
    rows, cols = windows.shape[:2]
    flat = np.ascontiguousarray(windows.reshape(rows * cols, -1))
    values = flat.reshape(-1, patch, patch, channels).astype(np.float32)
    down = np.abs(np.diff(values, axis=1)).mean((1, 2, 3))
    across = np.abs(np.diff(values, axis=2)).mean((1, 2, 3))
    textured = (values.std((1, 2, 3)) > min_std) & (down > min_gradient) & (across > min_gradient)
    keys = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, group, counts = np.unique(keys, return_inverse=True, return_counts=True)
    candidates = np.flatnonzero((counts[group] > 1) & textured)
    copied = np.zeros(rows * cols, bool)
    if len(candidates):
        order = candidates[np.argsort(group[candidates], kind="stable")]
        ids, ys, xs = group[order], order // cols, order % cols
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(ids)], strict=True):
            spread = (np.ptp(ys[start:end]) ** 2 + np.ptp(xs[start:end]) ** 2) ** 0.5
            if spread >= min_offset:  # not just a patch and its own shifted neighbour
                copied[order[start:end]] = True
    window_hits = copied.reshape(rows, cols).astype(np.uint8)
    # a pixel is covered when any window containing it was copied
    padded = np.zeros((height, width), np.uint8)
    padded[:rows, :cols] = window_hits
    covered = cv2.dilate(padded, np.ones((patch, patch), np.uint8), anchor=(patch - 1, patch - 1))
    return covered.astype(np.float32)


def residual_energy(image: np.ndarray) -> np.ndarray:
    """|Laplacian| of the grey image (float32 HxW): high-pass texture and noise."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.abs(cv2.Laplacian(gray, cv2.CV_32F))


def band_energy(image: np.ndarray) -> np.ndarray:
    """|difference of Gaussians (sigma 1 and 2.5)| of the grey image (float32 HxW): the texture
    one band coarser than ``residual_energy``."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.abs(cv2.GaussianBlur(gray, (0, 0), 1.0) - cv2.GaussianBlur(gray, (0, 0), 2.5))


def pool_cells(values: np.ndarray, grid: tuple[int, int], how: str = "mean") -> np.ndarray:
    """The mean (or max) of a HxW map over each cell of a (rows, columns) grid."""
    gh, gw = grid
    h, w = values.shape
    cells = values[: gh * (h // gh), : gw * (w // gw)].reshape(gh, h // gh, gw, w // gw)
    return cells.max((1, 3)) if how == "max" else cells.mean((1, 3))


def forensic_cells(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(len(FORENSIC_CHANNELS), gh, gw) float32 for one RGB uint8 image."""
    copies = duplicate_map(image)
    residual = np.log1p(pool_cells(residual_energy(image), grid, "mean"))
    band = np.log1p(pool_cells(band_energy(image), grid, "mean"))
    return np.stack(
        [
            pool_cells(copies, grid, "mean"),
            pool_cells(copies, grid, "max"),
            residual,
            residual - np.median(residual),
            band,
            band - np.median(band),
        ]
    ).astype(np.float32)
