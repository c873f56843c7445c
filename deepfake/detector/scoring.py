"""Scoring images with linear cell models: every cell's decision value under each model, computed
in batches while the next batch is read (one forward pass serves every model)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deepfake.features.extractor import FeatureExtractor
from deepfake.progress import chunks, prefetch
from deepfake.storage import Storage

# uri, bytes -> the image the detector sees
Reader = Callable[[str, bytes], np.ndarray]


def cell_decisions(
    extractor: FeatureExtractor, images: list[np.ndarray], weights: np.ndarray, biases: np.ndarray
) -> np.ndarray:
    """(n, cells, models) decision values of images of one size; ``weights`` is (cell_dim,
    models), ``biases`` (models,)."""
    return extractor.project(images, weights) + biases.astype(np.float32)


def score_uris(
    extractor: FeatureExtractor,
    storage: Storage,
    uris: list[str],
    weights: np.ndarray,
    biases: np.ndarray,
    read: Reader,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """(n, cells, models) for stored images, each read with ``read`` and optionally degraded by
    ``transform``, in batches (the next one read in the background)."""

    def load(batch: list[str]) -> list[np.ndarray]:
        images = []
        for uri, data in zip(batch, storage.read_many(batch), strict=True):
            if isinstance(data, Exception):
                raise data
            image = read(uri, data)
            images.append(transform(image) if transform else image)
        return images

    out = [cell_decisions(extractor, images, weights, biases)
           for images in prefetch(chunks(uris, batch_size), load)]  # fmt: skip
    return np.concatenate(out) if out else np.zeros((0, 1, weights.shape[1]), np.float32)
