"""The detector bundle: how a trained detector is loaded and used, and scoring of image files.

A bundle folder (the detector stage's folder, or ``models/<run id>`` after publishing) holds
``svm.skops`` (the fitted scikit-learn pipeline), ``detector.json`` (how features are made, the
threshold, the probability calibration and the files' sha256) and, when the backbone was
fine-tuned, ``backbone.safetensors``. Loading checks both digests and runs no code from the files:
skops admits scikit-learn's and numpy's own types only; safetensors holds tensors only.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from deepfake.detector import copyrule
from deepfake.detector.model import MODEL_FILE, linear_form, load_model, probability, top_k_mean
from deepfake.detector.scoring import cell_decisions, score_uris
from deepfake.detector.stage import BUNDLE_FILE
from deepfake.features.extractor import WEIGHTS_FILE, FeatureExtractor, read_weights
from deepfake.hashing import sha256
from deepfake.images import ImageError, decode, encode_png, square
from deepfake.sources.folder import IMAGE_SUFFIXES
from deepfake.storage import Storage, StorageError


def bundle_files(storage: Storage, detector_folder: str, extra: dict[str, Any]) -> dict[str, bytes]:
    """The files of a trained detector's bundle (name -> bytes), ``extra`` added to its
    metadata."""
    meta = storage.read_json(f"{detector_folder}/{BUNDLE_FILE}")
    names = [MODEL_FILE] + ([WEIGHTS_FILE] if meta.get("weights") else [])
    files = {name: storage.read_bytes(f"{detector_folder}/{name}") for name in names}
    files[BUNDLE_FILE] = json.dumps({**meta, **extra}, indent=2, sort_keys=True).encode()
    return files


@dataclass
class Detector:
    meta: dict[str, Any]
    model: Any
    extractor: FeatureExtractor

    @classmethod
    def load(cls, storage: Storage, folder: str, device: str = "auto") -> Detector:
        meta = storage.read_json(f"{folder}/{BUNDLE_FILE}")
        model = load_model(storage, folder, expected_sha256=meta["svm_sha256"])
        weights = None
        if meta.get("weights"):
            name = f"{storage.uri(folder)}/{meta['weights']}"
            data = storage.read_bytes(f"{folder}/{meta['weights']}")
            if sha256(data) != meta.get("weights_sha256"):
                raise ValueError(f"{name}: digest does not match its metadata")
            weights = read_weights(data, name)
        return cls(meta, model, FeatureExtractor.from_info(meta, weights, device))

    def __post_init__(self) -> None:
        weights, bias = linear_form(self.model)
        # Column 0: the SVM; column 1: each cell's copied share, for the copy rule.
        self._weights = np.stack([weights, copyrule.channel_weights(len(weights))], 1)
        self._bias = np.array([bias, 0.0])
        rule = self.meta.get("copy_rule")
        self._copy_threshold = float(rule["threshold"]) if rule else None

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

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
        scores = top_k_mean(both[..., 0], int(self.meta["top_k"]))
        if self._copy_threshold is None:
            return scores
        share = copyrule.shares(both[..., 1])
        return copyrule.fuse(scores, share, float(self.meta["threshold"]), self._copy_threshold)

    def _cells(self, both: np.ndarray) -> np.ndarray:
        if self._copy_threshold is None:
            return both[..., 0]
        share = copyrule.shares(both[..., 1])
        return copyrule.fuse_cells(both[..., 0], both[..., 1], share, self._copy_threshold)

    def probabilities(self, decisions: np.ndarray) -> np.ndarray:
        return probability(decisions, self.meta["calibration"])

    def label(self, decision: float) -> str:
        return "inpainted" if decision >= float(self.meta["threshold"]) else "real"

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


def expand(paths: list[str]) -> Iterator[tuple[str, Storage, str]]:
    """(display path, storage, relative name) of every image file named or inside a folder."""
    for path in paths:
        folder = Storage(path)
        if folder.list_files(""):  # a folder (or prefix): every image below it
            for rel in sorted(folder.list_files("")):
                if rel.lower().endswith(IMAGE_SUFFIXES):
                    yield posixpath.join(path.rstrip("/"), rel), folder, rel
        else:
            yield (path, *Storage.locate(path))


def score_paths(
    detector: Detector, paths: list[str], heatmaps: str | None = None
) -> Iterator[dict[str, Any]]:
    """One result per image: ``{"path", "score", "label"}``, or ``{"path", "error"}`` when it
    could not be read or decoded. With ``heatmaps`` (a folder or s3:// prefix), each image's
    heat map is written there as ``<name>.heatmap.png``."""
    out = Storage(heatmaps) if heatmaps else None
    for shown, store, rel in expand(paths):
        try:
            image = detector.normalise(store.read_bytes(rel), shown)
            result = detector.score_image(image)
            if out is not None:
                name = posixpath.basename(rel) + ".heatmap.png"
                out.write_bytes(name, detector.heatmap_png(image))
        except (ImageError, StorageError, OSError) as exc:
            message = str(exc) if shown in str(exc) else f"{shown}: {exc}"
            yield {"path": shown, "error": message}
            continue
        yield {"path": shown, "score": round(result["score"], 6), "label": result["label"]}
