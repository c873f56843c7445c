"""The detector bundle: how a trained detector is loaded and used, and scoring of image files.

A bundle folder (the detector stage's folder, or ``models/<run id>`` after publishing) holds
``svm.skops`` (the fitted scikit-learn pipeline), ``detector.json`` (how features are made, the
threshold, the probability calibration and the files' sha256) and, when the backbone was
fine-tuned, ``backbone.safetensors``. Loading checks both digests and runs no code from the files:
skops admits scikit-learn's and numpy's own types only; safetensors holds tensors only.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from deepfake.detector import BUNDLE_FILE, MODEL_FILE, load_model, probability
from deepfake.features.extractor import WEIGHTS_FILE, FeatureExtractor, read_weights
from deepfake.hashing import sha256
from deepfake.images import ImageError, decode, square
from deepfake.sources.folder import IMAGE_SUFFIXES
from deepfake.stages import chunks, prefetch
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

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def normalise(self, data: bytes, name: str) -> np.ndarray:
        """Decode an image file and bring it to the detector's input: RGB, centre-cropped square,
        the training images' side (what the sources stage does to every source)."""
        return np.asarray(square(decode(data, name), self.image_size))

    def decisions(self, images: list[np.ndarray]) -> np.ndarray:
        """SVM decision values (higher = more likely inpainted) of normalised images."""
        return self.model.decision_function(self.extractor.transform(images))

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

        def load(batch: list[str]) -> list[np.ndarray]:
            images = []
            for uri, data in zip(batch, storage.read_many(batch), strict=True):
                if isinstance(data, Exception):
                    raise data
                image = self.normalise(data, uri)
                images.append(transform(image) if transform else image)
            return images

        out = [self.decisions(images) for images in prefetch(chunks(uris, batch_size), load)]
        return np.concatenate(out) if out else np.zeros(0)

    def crop_probabilities(self, image: np.ndarray) -> tuple[np.ndarray, list[tuple]]:
        """Probability of every crop of a normalised image scored alone, and the crop boxes
        (top, left, height, width): the numbers behind a heat map. Needs a multi-crop detector."""
        if not self.extractor.crop_size:
            raise ValueError(
                "heat maps need a multi-crop detector (trained with features.crop_size set)"
            )
        vectors = self.extractor.transform_crops(image)
        boxes = self.extractor.crop_boxes(*image.shape[:2])
        return self.probabilities(self.model.decision_function(vectors)), boxes

    def heatmap_png(self, image: np.ndarray) -> bytes:
        """The image with each crop tinted by its probability (red = inpainted), as PNG."""
        scores, boxes = self.crop_probabilities(image)
        heat = np.zeros(image.shape[:2], np.float64)
        count = np.zeros(image.shape[:2], np.float64)
        for p, (top, left, h, w) in zip(scores, boxes, strict=True):
            heat[top : top + h, left : left + w] += p
            count[top : top + h, left : left + w] += 1
        heat /= np.maximum(count, 1)
        tint = np.stack([heat, np.zeros_like(heat), 1 - heat], -1) * 255
        blended = (0.55 * image.astype(np.float64) + 0.45 * tint).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(blended).save(buffer, format="PNG")
        return buffer.getvalue()


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
