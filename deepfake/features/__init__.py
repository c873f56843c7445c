"""Feature extraction: CNN features of every real and inpainted image, batched.

An image becomes one vector. By default (``pooling="multiscale"``) that is the spatial mean of
every backbone stage's feature map, concatenated: the early stages keep the fine texture that
inpainting smooths away, the late ones the content. Images are used at their native resolution
unless ``input_size`` is set. In multi-crop mode (``crop_size``) an image is cut into a grid of
crops at that resolution; each crop gets its own vector and the image vector is their mean and
their maximum, concatenated (the maximum keeps a small inpainted region from being averaged
away). With ``finetune_epochs > 0`` the backbone is first fine-tuned on the training split.

The stage manifest carries the usual columns plus ``features`` (one float32 vector per image);
``features.json`` says how they were made, and a fine-tuned backbone is saved beside it as
``backbone.safetensors`` (tensors only: loading it runs no code).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from deepfake.config import FeaturesConfig, digest_of
from deepfake.features.backbones import BACKBONES, Backbone, WeightsUnavailable, get_backbone
from deepfake.images import ImageError, decode_read, sha256
from deepfake.split import split_rows
from deepfake.stages import (
    Progress,
    StageOutput,
    chunks,
    finished,
    prefetch,
    stage_folder,
    write_manifest,
)
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "features"
INFO_FILE = "features.json"
WEIGHTS_FILE = "backbone.safetensors"
SKIPPED_FILE = "skipped.json"
_EXECUTION_ONLY = {"batch_size", "device"}

__all__ = [
    "BACKBONES",
    "FeatureExtractor",
    "WeightsUnavailable",
    "crop_starts",
    "feature_matrix",
    "read_images",
    "run_features",
]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def crop_starts(side: int, crop: int) -> list[int]:
    """Offsets of evenly spaced crops of ``crop`` pixels covering ``side`` pixels (overlapping
    where ``side`` is not a multiple of ``crop``); one crop of the whole side when it is smaller."""
    if crop >= side:
        return [0]
    count = math.ceil(side / crop)
    return [round(i * (side - crop) / (count - 1)) for i in range(count)]


class FeatureExtractor:
    """Turns batches of RGB uint8 images into image vectors (float32, one row per image)."""

    def __init__(
        self,
        backbone: str,
        input_size: int | None = None,
        device: str = "auto",
        pooling: str = "multiscale",
        crop_size: int | None = None,
        weights: bytes | None = None,
    ) -> None:
        if pooling not in ("multiscale", "last"):
            raise ValueError(f"unknown pooling {pooling!r}; choose multiscale or last")
        self.spec: Backbone = get_backbone(backbone)
        self.input_size, self.pooling, self.crop_size = input_size, pooling, crop_size
        self.device = resolve_device(device)
        self.model = self.spec.build().eval()
        if weights is not None:
            self.model.load_state_dict(load_safetensors(weights))
        self.model.to(self.device)
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_info(
        cls, info: dict[str, Any], weights: bytes | None = None, device: str = "auto"
    ) -> FeatureExtractor:
        """The extractor that ``info()`` describes (with its fine-tuned ``weights``, if any)."""
        return cls(
            info["backbone"],
            info.get("input_size"),
            device,
            pooling=info.get("pooling", "last"),
            crop_size=info.get("crop_size"),
            weights=weights,
        )

    def info(self) -> dict[str, Any]:
        return {
            "backbone": self.spec.name,
            "input_size": self.input_size,
            "pooling": self.pooling,
            "crop_size": self.crop_size,
            "dim": self.dim,
            "aggregation": "mean and max over crops, concatenated" if self.crop_size else None,
        }

    @property
    def crop_dim(self) -> int:
        return sum(self.spec.stage_channels) if self.pooling == "multiscale" else self.spec.features

    @property
    def dim(self) -> int:
        return self.crop_dim * (2 if self.crop_size else 1)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 arrays of one size -> a normalised float batch on the device."""
        batch = torch.from_numpy(np.stack(images)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if self.input_size is not None and batch.shape[-2:] != (self.input_size,) * 2:
            batch = F.interpolate(
                batch,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return (batch - self._mean) / self._std

    def crop_boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of every crop of an image this size, row by row."""
        if self.crop_size is None:
            return [(0, 0, height, width)]
        c = self.crop_size
        return [
            (top, left, min(c, height), min(c, width))
            for top in crop_starts(height, c)
            for left in crop_starts(width, c)
        ]

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "last":
            return self.model(x)
        return torch.cat([fmap.mean(dim=(2, 3)) for fmap in self.spec.stages(self.model, x)], 1)

    def embed_crops(self, x: torch.Tensor) -> torch.Tensor:
        """(n, crops, crop_dim) vectors of a preprocessed batch (differentiable)."""
        n, _, height, width = x.shape
        boxes = self.crop_boxes(height, width)
        crops = torch.stack([x[:, :, t : t + h, s : s + w] for t, s, h, w in boxes], 1)
        vectors = self._pool(crops.flatten(0, 1))
        return vectors.view(n, len(boxes), -1)

    def aggregate(self, crops: torch.Tensor) -> torch.Tensor:
        """(n, crops, crop_dim) -> (n, dim) image vectors."""
        if self.crop_size is None:
            return crops[:, 0]
        return torch.cat([crops.mean(1), crops.amax(1)], 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.embed_crops(x))

    @torch.inference_mode()
    def transform(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed(self.preprocess(images)).float().cpu().numpy()

    @torch.inference_mode()
    def transform_crops(self, image: np.ndarray) -> np.ndarray:
        """(crops, dim): each crop of one image as if it were a whole image of one crop (the
        vector a heat map scores)."""
        crops = self.embed_crops(self.preprocess([image]))[0]
        return self.aggregate(crops[:, None]).float().cpu().numpy()

    def weights_bytes(self) -> bytes:
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return save_safetensors(state)


def read_images(storage: Storage, uris: list[str]) -> list[np.ndarray | Exception]:
    """Decoded images (or the error that made one unreadable), read together."""
    out: list[np.ndarray | Exception] = []
    for uri, data in zip(uris, storage.read_many(uris), strict=True):
        try:
            out.append(decode_read(data, uri))
        except (ImageError, OSError) as exc:
            out.append(exc)
    return out


def output_folder(cfg: FeaturesConfig, dataset: StageOutput) -> str:
    settings = cfg.model_dump(mode="json", exclude=_EXECUTION_ONLY)
    if not cfg.finetune_epochs:  # fine-tuning settings shape nothing when there is none
        settings = {k: v for k, v in settings.items() if not k.startswith("finetune_")}
        settings.pop("seed")
    return stage_folder(STAGE, digest_of(settings), dataset)


def _finetune(
    storage: Storage, cfg: FeaturesConfig, extractor: FeatureExtractor, frame: pd.DataFrame
) -> dict[str, Any]:
    from deepfake.features.finetune import AUGMENTATION, finetune

    train = split_rows(frame, "train")
    uris, labels = list(train["uri"]), train["label"].to_numpy()

    def load(indices: list[int]) -> tuple[list[int], list[np.ndarray]]:
        images = read_images(storage, [uris[i] for i in indices])
        good = [isinstance(image, np.ndarray) for image in images]
        return [i for i, ok in zip(indices, good, strict=True) if ok], [
            image for image, ok in zip(images, good, strict=True) if ok
        ]

    log.info(
        "fine-tuning %s on %s: %d training images, %d epochs",
        cfg.backbone, extractor.device, len(train), cfg.finetune_epochs,
    )  # fmt: skip
    losses = finetune(
        extractor,
        load,
        labels,
        epochs=cfg.finetune_epochs,
        lr=cfg.finetune_lr,
        batch_size=cfg.finetune_batch_size,
        seed=cfg.seed,
    )
    return {
        "epochs": cfg.finetune_epochs,
        "lr": cfg.finetune_lr,
        "batch_size": cfg.finetune_batch_size,
        "seed": cfg.seed,
        "train_images": len(train),
        "train_groups": int(train["group"].nunique()),
        "augmentation": AUGMENTATION,
        "losses": losses,
    }


def run_features(storage: Storage, cfg: FeaturesConfig, dataset: StageOutput) -> StageOutput:
    folder = output_folder(cfg, dataset)
    done = finished(storage, STAGE, folder)
    if done:
        log.info("features: reusing %d finished vectors in %s", done.records, storage.uri(folder))
        return done
    frame = storage.read_parquet(dataset.manifest)
    extractor = FeatureExtractor(
        cfg.backbone, cfg.input_size, cfg.device, pooling=cfg.pooling, crop_size=cfg.crop_size
    )
    info: dict[str, Any] = {**extractor.info(), "weights": None, "finetune": None}
    files = [INFO_FILE, SKIPPED_FILE]
    if cfg.finetune_epochs:
        info["finetune"] = _finetune(storage, cfg, extractor, frame)
        weights = extractor.weights_bytes()
        storage.write_bytes(f"{folder}/{WEIGHTS_FILE}", weights)
        info.update(weights=WEIGHTS_FILE, weights_sha256=sha256(weights))
        files.append(WEIGHTS_FILE)
    log.info("features: %s on %s, %d images", cfg.backbone, extractor.device, len(frame))
    rows = list(frame.itertuples(index=False))
    kept_rows, vectors, skipped = [], [], []
    progress = Progress("features", len(frame))
    batches = chunks(rows, cfg.batch_size)
    for batch, images in zip(
        chunks(rows, cfg.batch_size),
        prefetch(batches, lambda b: read_images(storage, [row.uri for row in b])),
        strict=True,
    ):
        good = []
        for row, image in zip(batch, images, strict=True):
            if isinstance(image, Exception):
                log.warning("features: skipping %s: %s", row.uri, image)
                skipped.append({"record_id": row.record_id, "reason": str(image)})
            else:
                good.append(image)
                kept_rows.append(row)
        vectors.append(extractor.transform(good))
        if good and "image_size" not in info:
            info["image_size"] = int(good[0].shape[0])
        progress.advance(len(batch))
    out = pd.DataFrame(kept_rows)
    out["backbone"] = cfg.backbone
    out["features"] = list(np.concatenate(vectors).astype(np.float32))
    storage.write_json(f"{folder}/{SKIPPED_FILE}", skipped)
    storage.write_json(f"{folder}/{INFO_FILE}", info)
    return write_manifest(storage, STAGE, folder, out, files=files)


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The ``features`` column as an (n, d) float32 array."""
    return np.stack(frame["features"].to_numpy()).astype(np.float32)
