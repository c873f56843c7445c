"""Feature extraction: pooled CNN features of every real and inpainted image, batched.

The stage manifest carries the usual columns plus ``features`` (one float32 vector per image).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from deepfake.config import FeaturesConfig, digest_of
from deepfake.features.backbones import BACKBONES, Backbone, WeightsUnavailable, get_backbone
from deepfake.images import ImageError, decode_read
from deepfake.stages import Progress, StageOutput, chunks, finished, stage_folder, write_manifest
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "features"
_EXECUTION_ONLY = {"batch_size", "device"}

__all__ = ["BACKBONES", "FeatureExtractor", "WeightsUnavailable", "run_features", "feature_matrix"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class FeatureExtractor:
    """Turns batches of RGB uint8 images into backbone features (float32, one row per image)."""

    def __init__(self, backbone: str, input_size: int | None = None, device: str = "auto") -> None:
        self.spec: Backbone = get_backbone(backbone)
        self.input_size = input_size
        self.device = resolve_device(device)
        self.model = self.spec.build().eval().to(self.device)
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(images)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if self.input_size is not None and batch.shape[-1] != self.input_size:
            batch = F.interpolate(
                batch,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return (batch - self._mean) / self._std

    @torch.inference_mode()
    def transform(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.spec.features), dtype=np.float32)
        return self.model(self.preprocess(images)).float().cpu().numpy()


def output_folder(cfg: FeaturesConfig, dataset: StageOutput) -> str:
    settings = digest_of(cfg.model_dump(mode="json", exclude=_EXECUTION_ONLY))
    return stage_folder(STAGE, settings, dataset)


def run_features(storage: Storage, cfg: FeaturesConfig, dataset: StageOutput) -> StageOutput:
    folder = output_folder(cfg, dataset)
    done = finished(storage, STAGE, folder)
    if done:
        log.info("features: reusing %d finished vectors in %s", done.records, storage.uri(folder))
        return done
    frame = storage.read_parquet(dataset.manifest)
    extractor = FeatureExtractor(cfg.backbone, cfg.input_size, cfg.device)
    log.info("features: %s on %s, %d images", cfg.backbone, extractor.device, len(frame))
    kept_rows, vectors, skipped = [], [], []
    progress = Progress("features", len(frame))
    for batch in chunks(list(frame.itertuples(index=False)), cfg.batch_size):
        images, rows = [], []
        contents = storage.read_many([row.uri for row in batch])
        for row, data in zip(batch, contents, strict=True):
            try:
                images.append(decode_read(data, row.uri))
                rows.append(row)
            except (ImageError, OSError) as exc:
                log.warning("features: skipping %s: %s", row.uri, exc)
                skipped.append({"record_id": row.record_id, "reason": str(exc)})
        vectors.append(extractor.transform(images))
        kept_rows.extend(rows)
        progress.advance(len(batch))
    out = pd.DataFrame(kept_rows)
    out["backbone"] = cfg.backbone
    out["features"] = list(np.concatenate(vectors).astype(np.float32))
    storage.write_json(f"{folder}/skipped.json", skipped)
    return write_manifest(storage, STAGE, folder, out)


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The ``features`` column as an (n, d) float32 array."""
    return np.stack(frame["features"].to_numpy()).astype(np.float32)
