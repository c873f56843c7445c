"""The ``Detector`` that scores images with a bundle (see the package for what a bundle holds,
and ``files`` for how it is written, published and found): loading checks every digest and runs
no code from the files (skops admits scikit-learn's and numpy's own types only; safetensors holds
tensors only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from deepfake.detector import copyrule
from deepfake.detector.bundle.files import (
    MODEL_FILE,
    WEIGHTS_FILE,
    resolve_bundle,
    verified_files,
)
from deepfake.detector.model import linear_form, load_model, probability
from deepfake.detector.scoring import cell_decisions, score_uris
from deepfake.features.extractor import FeatureExtractor, read_weights
from deepfake.images import decode, encode_png, square
from deepfake.storage import Storage


def read_bundle(storage: Storage, folder: str) -> tuple[dict[str, Any], Any, dict | None]:
    """The metadata, fitted model and fine-tuned backbone weights (None: ImageNet's) of the
    bundle in ``folder``, each file checked against its digest; ``ValueError`` naming the file
    otherwise. Builds no backbone (what makes loading a detector take seconds)."""
    folder = resolve_bundle(storage, folder)  # once: for models/latest it reads the pointer
    meta, files = verified_files(storage, folder)
    return loaded_bundle(storage.uri(folder), meta, files)


def loaded_bundle(
    where: str, meta: dict[str, Any], files: dict[str, bytes]
) -> tuple[dict[str, Any], Any, dict | None]:
    """``read_bundle``'s result from the files ``verified_files`` read (``where``: their folder,
    for messages)."""
    model = load_model(files[MODEL_FILE], f"{where}/{MODEL_FILE}")
    weights = None
    if WEIGHTS_FILE in files:
        weights = read_weights(files[WEIGHTS_FILE], f"{where}/{WEIGHTS_FILE}")
    return meta, model, weights


@dataclass
class Detector:
    meta: dict[str, Any]
    model: Any
    extractor: FeatureExtractor

    @classmethod
    def load(cls, storage: Storage, folder: str, device: str = "auto") -> Detector:
        """The bundle in ``folder`` (``<models>/latest``: the live one)."""
        return cls.of(read_bundle(storage, folder), device)

    @classmethod
    def of(cls, bundle: tuple[dict[str, Any], Any, dict | None], device: str = "auto") -> Detector:
        """The detector of a bundle already read (``read_bundle``): builds its backbone."""
        meta, model, weights = bundle
        return cls(meta, model, FeatureExtractor.from_info(meta, weights, device))

    def __post_init__(self) -> None:
        weights, bias = linear_form(self.model)
        # Column 0: the SVM; column 1: each cell's copied share, for the copy rule.
        self._weights, self._bias = copyrule.with_channel([weights], [bias], self.extractor)
        rule = self.meta.get("copy_rule")
        self._copy_threshold = float(rule["threshold"]) if rule else None

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    def normalise(self, data: bytes, name: str) -> np.ndarray:
        """Decode an image file and bring it to the detector's input: RGB, centre-cropped square,
        the training images' side (what the sources stage does to every source)."""
        return np.asarray(square(decode(data, name), self.image_size))

    def cell_decisions(self, images: list[np.ndarray]) -> np.ndarray:
        """(n, cells) decision values of every cell of normalised images: the SVM's, with the
        copied cells of images the copy rule fires on lit."""
        return self._cells(cell_decisions(self.extractor, images, self._weights, self._bias))

    def decisions(self, images: list[np.ndarray]) -> np.ndarray:
        """Image decision values (higher = more likely inpainted): the mean of the top-k cells,
        lifted by the copy rule."""
        return self._images(cell_decisions(self.extractor, images, self._weights, self._bias))

    def _images(self, both: np.ndarray) -> np.ndarray:
        rule = np.inf if self._copy_threshold is None else self._copy_threshold
        share = copyrule.shares(both[..., 1])
        return copyrule.image_scores(both[..., 0], int(self.meta["top_k"]), share,
                                     self.threshold, rule)  # fmt: skip

    def _cells(self, both: np.ndarray) -> np.ndarray:
        if self._copy_threshold is None:
            return both[..., 0]
        share = copyrule.shares(both[..., 1])
        return copyrule.fuse_cells(both[..., 0], both[..., 1], share, self._copy_threshold)

    def probabilities(self, decisions: np.ndarray) -> np.ndarray:
        return probability(decisions, self.meta["calibration"])

    def label(self, decision: float) -> str:
        return "inpainted" if decision >= self.threshold else "real"

    def score_bytes(self, data: bytes, name: str) -> dict[str, Any]:
        """``{"score": probability of inpainting, "label", "decision"}`` for one image file."""
        return self.score_image(self.normalise(data, name))

    def score_image(self, image: np.ndarray) -> dict[str, Any]:
        """``score_bytes`` for an image already normalised."""
        decision = float(self.decisions([image])[0])
        return {
            "score": float(self.probabilities(np.array([decision]))[0]),
            "label": self.label(decision),
            "decision": decision,
        }

    def score_uris(
        self,
        storage: Storage,
        uris: list[str],
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        batch_size: int = 64,
    ) -> np.ndarray:
        """Decision values of stored images (each optionally degraded by ``transform`` after
        normalising), read and decoded in the background while the previous batch is scored."""
        both = score_uris(self.extractor, storage, uris, self._weights, self._bias,
                          read=lambda uri, data: self.normalise(data, uri), transform=transform,
                          batch_size=batch_size)  # fmt: skip
        return self._images(both) if len(uris) else np.zeros(0)

    def heat(self, image: np.ndarray) -> np.ndarray:
        """(height, width) probability that each pixel was inpainted: every cell's calibrated
        probability, interpolated between cell centres."""
        rows, cols = self.extractor.grid(*image.shape[:2])
        cells = self.cell_decisions([image])[0].reshape(rows, cols)
        return heat_pixels(probability(cells, self.meta["cell_calibration"]), image.shape[:2])

    def heatmap_png(self, image: np.ndarray) -> bytes:
        """The image tinted by ``heat`` (red = inpainted, blue = real), as PNG."""
        return encode_png(tint(image, self.heat(image)))


def heat_pixels(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (rows, cols) map of cell values stretched over an image of ``shape``, bilinearly."""
    height, width = shape
    return cv2.resize(cells.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def tint(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The image blended with a red (1.0) to blue (0.0) rendering of ``heat``."""
    colour = np.stack([heat, np.zeros_like(heat), 1 - heat], -1) * 255
    return (0.55 * image.astype(np.float64) + 0.45 * colour).clip(0, 255).astype(np.uint8)


def load_detector(model: str, device: str = "auto") -> Detector:
    """The bundle at ``model`` (a folder or s3:// prefix holding detector.json)."""
    storage, name = Storage.locate(model)
    return Detector.load(storage, name, device=device)
