"""The detector bundle: what a trained detector is made of, how it is saved, loaded and used.

A bundle folder holds ``svm.skops`` (the fitted scikit-learn pipeline) and ``detector.json``
(backbone, preprocessing, threshold, and the SVM file's sha256, checked on load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepfake.classify import MODEL_FILE, load_model
from deepfake.features import FeatureExtractor
from deepfake.images import decode, square
from deepfake.storage import Storage

BUNDLE_FILE = "detector.json"


def save_bundle(
    storage: Storage, detector_folder: str, bundle_folder: str, meta: dict[str, Any]
) -> None:
    """Copy the trained SVM into ``bundle_folder`` and write its metadata beside it."""
    storage.write_bytes(
        f"{bundle_folder}/{MODEL_FILE}", storage.read_bytes(f"{detector_folder}/{MODEL_FILE}")
    )
    storage.write_json(f"{bundle_folder}/{BUNDLE_FILE}", meta)


@dataclass
class Detector:
    meta: dict[str, Any]
    model: Any
    extractor: FeatureExtractor

    @classmethod
    def load(cls, storage: Storage, folder: str, device: str = "auto") -> Detector:
        meta = storage.read_json(f"{folder}/{BUNDLE_FILE}")
        model = load_model(storage, folder, expected_sha256=meta["svm_sha256"])
        extractor = FeatureExtractor(meta["backbone"], meta.get("input_size"), device)
        return cls(meta, model, extractor)

    def score_bytes(self, data: bytes, name: str) -> float:
        """SVM decision value for one encoded image (higher = more likely inpainted)."""
        image = square(decode(data, name), int(self.meta["image_size"]))
        features = self.extractor.transform([np.asarray(image)])
        return float(self.model.decision_function(features)[0])

    def label(self, score: float) -> str:
        return "inpainted" if score >= float(self.meta["threshold"]) else "real"
