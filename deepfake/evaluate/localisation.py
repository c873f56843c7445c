"""Where the edit is: the detector's heat maps (every cell's decision value, from the detector
stage) against the true masks of the test images.

- pixel ROC-AUC: every pixel of every test image (real images' pixels are all negatives), the
  heat map interpolated between cell centres;
- F1 and IoU at the heat map's own threshold (a cell probability of 0.5, from the cell
  calibration): F1 over all pixels of the inpainted test images, IoU per image then averaged;
- the same per mask type and per mask area.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from deepfake.detector.bundle import heat_pixels
from deepfake.detector.model import probability
from deepfake.evaluate.metrics import area_bucket, ranked_scores
from deepfake.images import decode_png_array
from deepfake.storage import Storage


def pixel_maps(
    storage: Storage, test: pd.DataFrame, cell_calibration: dict[str, float], side: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(true masks (bool HxW), heat probabilities (HxW)) of every test image (of ``side``
    pixels), in order."""
    masks, heats = [], []
    uris = [u for u in test["mask_uri"] if u]
    read = dict(zip(uris, storage.read_many(uris), strict=True))
    for row in test.itertuples(index=False):
        rows, cols = (int(v) for v in row.grid)
        cells = probability(np.asarray(row.heat, np.float32).reshape(rows, cols), cell_calibration)
        if row.mask_uri:
            mask = decode_png_array(read[row.mask_uri], row.mask_uri) > 127
        else:  # a real image, or a whole-image reconstruction
            mask = np.full((side, side), row.label == 1, bool)
        masks.append(mask)
        heats.append(heat_pixels(cells, mask.shape))
    return masks, heats


class _Ranked:
    """Every pixel of the test images, sorted once by descending heat: the ROC-AUC of any set
    of images is then one pass over the pixels in order, not a sort of its own."""

    def __init__(self, masks: list[np.ndarray], heats: list[np.ndarray]) -> None:
        heat = np.concatenate([h.ravel() for h in heats])
        order = np.argsort(-heat, kind="stable")
        self.heat = heat[order]
        self.truth = np.concatenate([m.ravel() for m in masks])[order]
        self.image = np.repeat(np.arange(len(masks)), [m.size for m in masks])[order]
        self.count = len(masks)

    def roc_auc(self, images: np.ndarray) -> float | None:
        chosen = np.zeros(self.count, bool)
        chosen[images] = True
        keep = chosen[self.image]
        truth = self.truth[keep]
        if truth.all() or not truth.any():
            return None
        return ranked_scores(truth, self.heat[keep])[0]


def _scores(
    masks: list[np.ndarray], heats: list[np.ndarray], fakes: np.ndarray, auc: float | None
) -> dict[str, Any]:
    truth = np.concatenate([m.ravel() for m in masks])
    heat = np.concatenate([h.ravel() for h in heats])
    said = heat >= 0.5
    f1 = float(2 * (said & truth).sum() / max(said.sum() + truth.sum(), 1))
    ious = [float((m & (h >= 0.5)).sum() / max((m | (h >= 0.5)).sum(), 1))
            for m, h, f in zip(masks, heats, fakes, strict=True) if f]  # fmt: skip
    return {"pixel_roc_auc": auc, "pixel_f1": f1, "iou": float(np.mean(ious)) if ious else None,
            "n_inpainted": int(fakes.sum())}  # fmt: skip


def localisation(
    storage: Storage, test: pd.DataFrame, cell_calibration: dict[str, float], side: int
) -> dict[str, Any]:
    """metrics.json's ``localisation``: overall (all test images) and per mask type and area
    (that group's inpainted images only)."""
    masks, heats = pixel_maps(storage, test, cell_calibration, side)
    fakes = test["label"].to_numpy() == 1
    ranked = _Ranked(masks, heats)
    out = _scores(masks, heats, fakes, ranked.roc_auc(np.arange(len(masks))))
    for column, keys in (("per_mask_type", test["variant"]),
                         ("per_mask_area", test["coverage"].map(area_bucket))):  # fmt: skip
        out[column] = {}
        for value in sorted(keys[fakes].unique()):
            chosen = np.flatnonzero(fakes & (keys == value).to_numpy())
            picked_masks, picked_heats = [masks[i] for i in chosen], [heats[i] for i in chosen]
            out[column][str(value)] = _scores(picked_masks, picked_heats, fakes[chosen],
                                              ranked.roc_auc(chosen))  # fmt: skip
    return out
