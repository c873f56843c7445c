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


class _Pixels:
    """Every pixel of the test images, read once: sorted by descending heat, so that the ROC-AUC
    of any set of images is one pass over the pixels in order, not a sort of its own; and each
    image's counts at the heat map's threshold, so that F1 and IoU of a set are sums."""

    def __init__(self, masks: list[np.ndarray], heats: list[np.ndarray], fakes: np.ndarray) -> None:
        heat = np.concatenate([h.ravel() for h in heats])
        order = np.argsort(-heat, kind="stable")
        self.heat = heat[order]
        self.truth = np.concatenate([m.ravel() for m in masks])[order]
        self.image = np.repeat(np.arange(len(masks)), [m.size for m in masks])[order]
        said = [h >= 0.5 for h in heats]
        self.hits = np.array([(m & s).sum() for m, s in zip(masks, said, strict=True)])
        self.said = np.array([s.sum() for s in said])
        self.true = np.array([m.sum() for m in masks])
        unions = np.array([(m | s).sum() for m, s in zip(masks, said, strict=True)])
        self.iou = self.hits / np.maximum(unions, 1)
        self.fakes = fakes

    def scores(self, images: np.ndarray) -> dict[str, Any]:
        """Pixel ROC-AUC, pixel F1 and mean IoU (over its inpainted images) of a set of images."""
        fakes = images[self.fakes[images]]
        f1 = float(2 * self.hits[images].sum() / max(self.said[images].sum()
                                                     + self.true[images].sum(), 1))  # fmt: skip
        return {"pixel_roc_auc": self._roc_auc(images), "pixel_f1": f1,
                "iou": float(np.mean(self.iou[fakes])) if len(fakes) else None,
                "n_inpainted": len(fakes)}  # fmt: skip

    def _roc_auc(self, images: np.ndarray) -> float | None:
        chosen = np.zeros(len(self.fakes), bool)
        chosen[images] = True
        keep = chosen[self.image]
        truth = self.truth[keep]
        if truth.all() or not truth.any():
            return None
        return ranked_scores(truth, self.heat[keep])[0]


def localisation(
    storage: Storage, test: pd.DataFrame, cell_calibration: dict[str, float], side: int
) -> dict[str, Any]:
    """metrics.json's ``localisation``: overall (all test images) and per mask type and area
    (that group's inpainted images only)."""
    masks, heats = pixel_maps(storage, test, cell_calibration, side)
    fakes = test["label"].to_numpy() == 1
    pixels = _Pixels(masks, heats, fakes)
    out = pixels.scores(np.arange(len(masks)))
    for column, keys in (("per_mask_type", test["variant"]),
                         ("per_mask_area", test["coverage"].map(area_bucket))):  # fmt: skip
        out[column] = {}
        for value in sorted(keys[fakes].unique()):
            out[column][str(value)] = pixels.scores(
                np.flatnonzero(fakes & (keys == value).to_numpy())
            )
    return out
