"""The detector bundle: the one folder that holds a trained detector, how it is written and
loaded, and the ``Detector`` that scores images with it.

A bundle is the detector stage's folder, or ``models/<run id>`` after publishing. Its files have
fixed names:

- ``detector.json``: how cells are made, the aggregation, the threshold, the probability
  calibrations and the sha256 of the other files;
- ``svm.skops``: the fitted cell pipeline (scaler and linear SVM), in skops' format, not pickle;
- ``backbone.safetensors``: the fine-tuned backbone, when there is one (tensors only).

Loading checks both digests and runs no code from the files: skops admits scikit-learn's and
numpy's own types only; safetensors holds tensors only.

Published bundles live in ``models/<run id>/``, written whole and never changed; which one is
live is one small file beside them, ``models/latest.json`` (``{"run_id": ...}``), replaced in one
atomic write. ``models/latest`` names the live bundle wherever a bundle is loaded by name.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from deepfake.detector import copyrule
from deepfake.detector.model import linear_form, load_model, probability, top_k_mean
from deepfake.detector.scoring import cell_decisions, score_uris
from deepfake.features.extractor import WEIGHTS_FILE, FeatureExtractor, read_weights
from deepfake.hashing import sha256
from deepfake.images import decode, encode_png, square
from deepfake.storage import Storage

BUNDLE_FILE = "detector.json"
MODEL_FILE = "svm.skops"
LATEST = "latest"
POINTER_FILE = f"{LATEST}.json"
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_run_id(run_id: str) -> str:
    """``run_id``, if it can name a run's folders: letters, digits, ``_``, ``.`` and ``-``,
    starting with a letter or digit, and not ``latest``; else ``ValueError``."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or run_id == LATEST:
        raise ValueError(
            f"run id {run_id!r} cannot name a run: use letters, digits, '_', '.' and '-', "
            f"starting with a letter or digit, and not {LATEST!r}"
        )
    return run_id


def live_bundle(storage: Storage, models: str) -> str | None:
    """The folder of the live bundle among ``models`` (``models/<run id>`` as its pointer says),
    or None when there is none. A ``latest`` folder holding a bundle itself (earlier versions
    published so) counts when there is no pointer."""
    pointer = posixpath.join(models, POINTER_FILE) if models else POINTER_FILE
    if storage.exists(pointer):
        run_id = storage.read_json(pointer).get("run_id")
        try:
            return posixpath.join(models, check_run_id(run_id))
        except ValueError as exc:
            raise ValueError(f"{storage.uri(pointer)}: {exc}") from None
    legacy = posixpath.join(models, LATEST)
    return legacy if has_bundle(storage, legacy) else None


def resolve_bundle(storage: Storage, folder: str) -> str:
    """``folder``, or for ``<models>/latest`` the live bundle's folder."""
    parent, name = posixpath.split(folder.rstrip("/"))
    if name != LATEST:
        return folder
    live = live_bundle(storage, parent)
    if live is None:
        raise FileNotFoundError(f"{storage.uri(folder)}: no detector has been published there")
    return live


def point_latest(storage: Storage, models: str, run_id: str) -> None:
    """Make ``models/<run id>`` the live bundle: one atomic write of the pointer."""
    storage.write_json(posixpath.join(models, POINTER_FILE), {"run_id": check_run_id(run_id)})


def write_bundle(
    storage: Storage, folder: str, meta: dict[str, Any], model: bytes, weights: bytes | None
) -> list[str]:
    """Write a bundle's files into ``folder`` (``meta`` gains the files' digests); returns the
    names written."""
    storage.write_bytes(f"{folder}/{MODEL_FILE}", model)
    meta = {**meta, "svm_sha256": sha256(model), "weights": None}
    names = [MODEL_FILE, BUNDLE_FILE]
    if weights is not None:
        storage.write_bytes(f"{folder}/{WEIGHTS_FILE}", weights)
        meta.update(weights=WEIGHTS_FILE, weights_sha256=sha256(weights))
        names.append(WEIGHTS_FILE)
    storage.write_json(f"{folder}/{BUNDLE_FILE}", meta)
    return names


def read_bundle(storage: Storage, folder: str) -> tuple[dict[str, Any], Any, dict | None]:
    """The metadata, fitted model and fine-tuned backbone weights (None: ImageNet's) of the
    bundle in ``folder``, each file checked against its digest; ``ValueError`` naming the file
    otherwise. Builds no backbone (what makes loading a detector take seconds)."""
    folder = resolve_bundle(storage, folder)
    meta = bundle_meta(storage, folder)
    name = f"{storage.uri(folder)}/{MODEL_FILE}"
    model = load_model(storage.read_bytes(f"{folder}/{MODEL_FILE}"), name, meta["svm_sha256"])
    weights = None
    if meta.get("weights"):  # the file's name is fixed: never taken from the metadata
        name = f"{storage.uri(folder)}/{WEIGHTS_FILE}"
        data = storage.read_bytes(f"{folder}/{WEIGHTS_FILE}")
        if sha256(data) != meta.get("weights_sha256"):
            raise ValueError(f"{name}: digest does not match its metadata")
        weights = read_weights(data, name)
    return meta, model, weights


def has_bundle(storage: Storage, folder: str) -> bool:
    return storage.exists(f"{folder}/{BUNDLE_FILE}")


def bundle_meta(storage: Storage, folder: str) -> dict[str, Any]:
    return storage.read_json(f"{folder}/{BUNDLE_FILE}")


def bundle_files(storage: Storage, folder: str, extra: dict[str, Any]) -> dict[str, bytes]:
    """Every file of the bundle in ``folder`` (name -> bytes), ``extra`` added to its
    metadata: what publishing copies."""
    meta = bundle_meta(storage, folder)
    names = [MODEL_FILE] + ([WEIGHTS_FILE] if meta.get("weights") else [])
    files = {name: storage.read_bytes(f"{folder}/{name}") for name in names}
    files[BUNDLE_FILE] = json.dumps({**meta, **extra}, indent=2, sort_keys=True).encode()
    return files


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
        self._weights = np.stack([weights, copyrule.channel_weights(len(weights))], 1)
        self._bias = np.array([bias, 0.0])
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
        scores = top_k_mean(both[..., 0], int(self.meta["top_k"]))
        if self._copy_threshold is None:
            return scores
        share = copyrule.shares(both[..., 1])
        return copyrule.fuse(scores, share, self.threshold, self._copy_threshold)

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
