"""The copy rule: a fixed, training-free detector of exemplar (copy-based) fills, beside the SVM.

An exemplar fill (Criminisi, PatchMatch, content-aware fill) builds the region from exact copies of
patches found elsewhere in the same image, so it leaves no generator trace for the SVM to learn;
and an SVM trained without such fills gives them no weight (leave-one-method-out ROC-AUC 0.52 on
the offline default). But a photo almost never repeats a textured patch exactly (at most 0.6 %
of any real image of the offline default is such repeats), so the share of
the image made of exact copies (``forensics.duplicate_map``, pooled per cell as the
``copies_mean`` channel) is strong evidence that needs no example of the method.

The rule is calibrated on real training images only: it fires when the copied share exceeds
``threshold``, the 99th percentile of the training real images' shares (at least 0.5 %). It never
lowers a score and leaves the images it does not flag alone: a flagged image's score is
``max(svm, svm_threshold + GAIN * (share - threshold))``, over the SVM's threshold by one SVM
margin per 10 % of the image copied beyond the rule's. Cells of an image the rule fires on are
lit in its heat map the same way by their own copied share (``fuse_cells``). Exact copies do
not survive lossy compression: after JPEG the rule stays silent and the SVM alone decides, unless
the features have near-copy channels (``features.near_copies``): then a cell's copied share also
counts its near-copy windows, and the threshold is calibrated on that sum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deepfake.detector.model import top_k_mean

if TYPE_CHECKING:  # the extractor's module imports the bundle's, which imports this one
    from deepfake.features.extractor import FeatureExtractor

GAIN = 10.0  # SVM margin units per unit of copied share beyond the threshold
FALSE_ALARMS = 0.01  # share of training real images allowed above the threshold
FLOOR = 0.005  # never fire on less than 0.5 % of the image copied
CHANNEL = "copies_mean"
NEAR_CHANNEL = "near_copies_mean"


def channel_weights(extractor: FeatureExtractor) -> np.ndarray:
    """(cell_dim,) weights whose product with a cell's features (``extractor``'s) is its copied
    share: its share of exact copies, plus its share of near-copy windows when the features have
    them (``features.near_copies``: copies that JPEG or resizing changed, which exact copies
    miss)."""
    weights = np.zeros(extractor.cell_dim)
    weights[extractor.channel_index(CHANNEL)] = 1.0
    if extractor.near_copies:
        weights[extractor.channel_index(NEAR_CHANNEL)] = 1.0
    return weights


def with_channel(
    weights: list[np.ndarray], biases: list[float], extractor: FeatureExtractor
) -> tuple[np.ndarray, np.ndarray]:
    """Linear cell models' (cell_dim, models + 1) weights and (models + 1,) biases: theirs, then
    the copy channel (the cell's copied share) that the rule reads, in one product."""
    channel = channel_weights(extractor)
    return np.stack([*weights, channel], 1), np.array([*biases, 0.0])


def shares(copied_cells: np.ndarray) -> np.ndarray:
    """Images' copied shares from their cells' (n, cells) copied shares."""
    return copied_cells.mean(axis=1)


def calibrate(real_shares: np.ndarray) -> float:
    """The rule's threshold from the copied shares of real training images."""
    if len(real_shares) == 0:
        return 1.0
    return max(FLOOR, float(np.quantile(real_shares, 1 - FALSE_ALARMS, method="higher")))


def fuse(
    svm_scores: np.ndarray, copied_shares: np.ndarray, svm_threshold: float, threshold: float
) -> np.ndarray:
    """Image scores with the rule applied (see the module's docstring)."""
    excess = np.asarray(copied_shares) - threshold
    return np.where(excess >= 0, np.maximum(svm_scores, svm_threshold + GAIN * excess), svm_scores)


def image_scores(
    svm_cells: np.ndarray, top_k: int, copied_shares: np.ndarray, svm_threshold: float,
    threshold: float,
) -> np.ndarray:  # fmt: skip
    """Image scores from cell decision values (n, cells): the mean of the ``top_k`` highest,
    with the rule applied (``threshold`` inf: no rule)."""
    return fuse(top_k_mean(svm_cells, top_k), copied_shares, svm_threshold, threshold)


def fuse_cells(
    svm_cells: np.ndarray, copied_cells: np.ndarray, copied_shares: np.ndarray, threshold: float
) -> np.ndarray:
    """Cell decision values (n, cells) with the cells of images the rule fires on lit by their
    copied share, as images are: ``GAIN * (copied - threshold)`` over the cell margin (0). Most
    cells of a small edit are only partly inside it, so a cell needs no majority of copies: in an
    image the rule flags, a cell copied beyond what real images hold is evidence; a cell with
    no more copies than that keeps the SVM's value."""
    copied = np.asarray(copied_cells)
    fires = (np.asarray(copied_shares) >= threshold)[:, None] & (copied > threshold)
    return np.where(fires, np.maximum(svm_cells, GAIN * (copied - threshold)), svm_cells)
