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
``backbone.safetensors`` (tensors only: loading it runs no code) with ``finetune.json``. Each
extraction batch is written to ``parts/`` as it finishes, so a killed run, restarted, reuses the
fine-tuned backbone and every finished batch.
"""

from __future__ import annotations

import copy
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
from deepfake.features.backbones import (
    BACKBONES,
    Backbone,
    WeightsUnavailable,
    fold_batchnorm,
    get_backbone,
)
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
FINETUNE_FILE = "finetune.json"
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


def resolve_precision(name: str, device: torch.device) -> str:
    """A concrete compute precision for ``auto``: bfloat16 where the device computes it natively
    (CUDA GPUs from Ampere on; CPUs with AVX512-BF16 or AMX), float16 on older GPUs, float32
    elsewhere (emulated bfloat16 is slower than float32)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    native = [getattr(torch.cpu, f, lambda: False)() for f in
              ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]  # fmt: skip
    return "bfloat16" if any(native) else "float32"


def read_weights(data: bytes, name: str = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes; anything else (a pickle, say) is refused unread."""
    try:
        return load_safetensors(data)
    except Exception as exc:  # safetensors parses a header and raw tensors, never code
        raise ValueError(f"{name}: not a safetensors file ({type(exc).__name__})") from None


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
        weights: dict[str, torch.Tensor] | None = None,
        precision: str = "float32",
    ) -> None:
        if pooling not in ("multiscale", "last"):
            raise ValueError(f"unknown pooling {pooling!r}; choose multiscale or last")
        self.spec: Backbone = get_backbone(backbone)
        self.input_size, self.pooling, self.crop_size = input_size, pooling, crop_size
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = self.spec.build().eval()
        if weights is not None:
            self.model.load_state_dict(weights)
        # Channels-last lets oneDNN and cuDNN pick their fastest convolutions.
        self.model.to(self.device, memory_format=torch.channels_last)
        self._inference: torch.nn.Module | None = None
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_info(
        cls,
        info: dict[str, Any],
        weights: dict[str, torch.Tensor] | None = None,
        device: str = "auto",
    ) -> FeatureExtractor:
        """The extractor that ``info()`` describes (with its fine-tuned ``weights``, read with
        ``read_weights``, if any). A device without native support for the recorded precision
        computes in float32."""
        precision = info.get("precision", "float32")
        if resolve_precision("auto", resolve_device(device)) == "float32":
            precision = "float32"
        return cls(
            info["backbone"],
            info.get("input_size"),
            device,
            pooling=info.get("pooling", "last"),
            crop_size=info.get("crop_size"),
            weights=weights,
            precision=precision,
        )

    def info(self) -> dict[str, Any]:
        return {
            "backbone": self.spec.name,
            "input_size": self.input_size,
            "pooling": self.pooling,
            "crop_size": self.crop_size,
            "precision": self.precision,
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
        batch = (batch - self._mean) / self._std
        return batch.contiguous(memory_format=torch.channels_last)

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

    def _pool(
        self, model: torch.nn.Module, x: torch.Tensor, precision: str | None = None
    ) -> torch.Tensor:
        precision = precision or self.precision
        with torch.autocast(
            self.device.type, dtype=getattr(torch, precision), enabled=precision != "float32"
        ):
            if self.pooling == "last":
                return model(x).float()
            maps = self.spec.stages(model, x)
            return torch.cat([fmap.float().mean(dim=(2, 3)) for fmap in maps], 1)

    def inference_model(self, example: torch.Tensor) -> torch.nn.Module:
        """The backbone with its batch norms folded into the convolutions (about 1.7x faster on
        a CPU), made once; the unfolded model if folding would change its outputs."""
        if self._inference is None:
            folded = fold_batchnorm(copy.deepcopy(self.model).eval())
            with torch.inference_mode():  # the same function, checked in full precision
                want = self._pool(self.model, example, "float32")
                got = self._pool(folded, example, "float32")
            close = torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
            if not close:
                log.warning("features: folding batch norms changed %s's outputs; not folded",
                            self.spec.name)  # fmt: skip
            self._inference = folded if close else self.model
        return self._inference

    def trained(self) -> None:
        """Call after changing the backbone's weights: the folded copy is made again."""
        self._inference = None

    def embed_crops(self, x: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        """(n, crops, crop_dim) vectors of a preprocessed batch (differentiable with the
        default ``model``, the trainable backbone)."""
        n, _, height, width = x.shape
        boxes = self.crop_boxes(height, width)
        crops = torch.stack([x[:, :, t : t + h, s : s + w] for t, s, h, w in boxes], 1)
        vectors = self._pool(model or self.model, crops.flatten(0, 1))
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
        x = self.preprocess(images)
        model = self.inference_model(x[:1])
        return self.aggregate(self.embed_crops(x, model)).float().cpu().numpy()

    @torch.inference_mode()
    def transform_crops(self, image: np.ndarray) -> np.ndarray:
        """(crops, dim): each crop of one image as if it were a whole image of one crop (the
        vector a heat map scores)."""
        x = self.preprocess([image])
        crops = self.embed_crops(x, self.inference_model(x))[0]
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


def _fine_tuned(
    storage: Storage, cfg: FeaturesConfig, extractor: FeatureExtractor, frame: pd.DataFrame,
    folder: str,
) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``extractor`` and save the weights, or load them from a fine-tuning that an
    interrupted run finished (its record is written after its weights)."""
    record = f"{folder}/{FINETUNE_FILE}"
    if storage.exists(record) and storage.exists(f"{folder}/{WEIGHTS_FILE}"):
        tuning = storage.read_json(record)
        weights = storage.read_bytes(f"{folder}/{WEIGHTS_FILE}")
        if sha256(weights) == tuning["weights_sha256"]:
            log.info("features: reusing the fine-tuned backbone in %s", storage.uri(folder))
            extractor.model.load_state_dict(read_weights(weights))
            extractor.trained()
            return tuning
    tuning = _finetune(storage, cfg, extractor, frame)
    weights = extractor.weights_bytes()
    storage.write_bytes(f"{folder}/{WEIGHTS_FILE}", weights)
    tuning["weights_sha256"] = sha256(weights)
    storage.write_json(record, tuning)
    return tuning


def _part_name(index: int, rows: list[Any]) -> str:
    return f"{index:05d}-{digest_of([r.record_id for r in rows])[:12]}.parquet"


def _extract(
    storage: Storage, cfg: FeaturesConfig, extractor: FeatureExtractor, frame: pd.DataFrame,
    folder: str,
) -> pd.DataFrame:  # fmt: skip
    """``record_id``, ``features`` and ``side`` (None when unreadable) and ``reason`` of every
    row, one part file per batch: a killed run, restarted, redoes only the batch it was in."""
    rows = list(frame.itertuples(index=False))
    batches = list(enumerate(chunks(rows, cfg.batch_size)))
    present = storage.list_files(f"{folder}/parts")
    todo = [(i, b) for i, b in batches if _part_name(i, b) not in present]
    done = len(batches) - len(todo)
    if done:
        log.info("features: %d of %d batches already done in %s", done, len(batches),
                 storage.uri(folder))  # fmt: skip
    progress = Progress("features", sum(len(b) for _, b in todo))

    def load(item: tuple[int, list[Any]]) -> list[np.ndarray | Exception]:
        return read_images(storage, [row.uri for row in item[1]])

    written = {}
    for (index, batch), images in zip(todo, prefetch(todo, load), strict=True):
        good = [image for image in images if not isinstance(image, Exception)]
        vectors = iter(extractor.transform(good))
        part = []
        for row, image in zip(batch, images, strict=True):
            if isinstance(image, Exception):
                log.warning("features: skipping %s: %s", row.uri, image)
            bad = isinstance(image, Exception)
            part.append({
                "record_id": row.record_id,
                "features": None if bad else next(vectors),
                "side": None if bad else int(image.shape[0]),
                "reason": str(image) if bad else None,
            })  # fmt: skip
        written[index] = pd.DataFrame(part)
        storage.write_parquet(f"{folder}/parts/{_part_name(index, batch)}", written[index])
        progress.advance(len(batch))
    parts = [
        written[i] if i in written else storage.read_parquet(f"{folder}/parts/{_part_name(i, b)}")
        for i, b in batches
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def run_features(storage: Storage, cfg: FeaturesConfig, dataset: StageOutput) -> StageOutput:
    # Features computed in another precision are other features: resolve auto before naming.
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    cfg = cfg.model_copy(update={"precision": precision})
    folder = output_folder(cfg, dataset)
    done = finished(storage, STAGE, folder)
    if done:
        log.info("features: reusing %d finished vectors in %s", done.records, storage.uri(folder))
        return done
    frame = storage.read_parquet(dataset.manifest)
    extractor = FeatureExtractor(
        cfg.backbone,
        cfg.input_size,
        cfg.device,
        pooling=cfg.pooling,
        crop_size=cfg.crop_size,
        precision=cfg.precision,
    )
    info: dict[str, Any] = {**extractor.info(), "weights": None, "finetune": None}
    files = [INFO_FILE, SKIPPED_FILE]
    if cfg.finetune_epochs:
        tuning = _fine_tuned(storage, cfg, extractor, frame, folder)
        info.update(finetune=tuning, weights=WEIGHTS_FILE, weights_sha256=tuning["weights_sha256"])
        files.append(WEIGHTS_FILE)
    log.info("features: %s on %s, %d images", cfg.backbone, extractor.device, len(frame))
    vectors = _extract(storage, cfg, extractor, frame, folder)
    readable = vectors["features"].notna().to_numpy()
    skipped = [{"record_id": r, "reason": why} for r, why in
               vectors.loc[~readable, ["record_id", "reason"]].itertuples(index=False)]  # fmt: skip
    out = frame[frame["record_id"].isin(set(vectors.loc[readable, "record_id"]))].copy()
    by_record = dict(zip(vectors["record_id"], vectors["features"], strict=True))
    out["backbone"] = cfg.backbone
    out["features"] = [np.asarray(by_record[r], dtype=np.float32) for r in out["record_id"]]
    if readable.any():
        info["image_size"] = int(vectors.loc[readable, "side"].iloc[0])
    storage.write_json(f"{folder}/{SKIPPED_FILE}", skipped)
    storage.write_json(f"{folder}/{INFO_FILE}", info)
    return write_manifest(storage, STAGE, folder, out, files=files)


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The ``features`` column as an (n, d) float32 array."""
    return np.stack(frame["features"].to_numpy()).astype(np.float32)
