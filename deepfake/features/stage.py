"""The features stage: CNN features of every real and inpainted image, batched.

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

import logging
from typing import Any

import numpy as np
import pandas as pd

from deepfake.config import FeaturesConfig
from deepfake.devices import resolve_device
from deepfake.features.extractor import (
    WEIGHTS_FILE,
    FeatureExtractor,
    read_weights,
    resolve_precision,
)
from deepfake.hashing import digest_of, sha256
from deepfake.images import ImageError, decode_read
from deepfake.split import split_rows
from deepfake.stages import Progress, StageOutput, chunks, prefetch, run_stage, stage_folder
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "features"
INFO_FILE = "features.json"
FINETUNE_FILE = "finetune.json"
SKIPPED_FILE = "skipped.json"


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
    settings = cfg.result_dict()
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


def extract_features(storage: Storage, cfg: FeaturesConfig, dataset: StageOutput) -> StageOutput:
    """The vectors of every readable image of ``dataset`` (fine-tuning the backbone first on the
    training split, when asked)."""
    # Features computed in another precision are other features: resolve auto before naming.
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    cfg = cfg.model_copy(update={"precision": precision})

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
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
            info.update(finetune=tuning, weights=WEIGHTS_FILE,
                        weights_sha256=tuning["weights_sha256"])  # fmt: skip
            files.append(WEIGHTS_FILE)
        log.info("features: %s on %s, %d images", cfg.backbone, extractor.device, len(frame))
        vectors = _extract(storage, cfg, extractor, frame, folder)
        readable = vectors["features"].notna().to_numpy()
        unreadable = vectors.loc[~readable, ["record_id", "reason"]].itertuples(index=False)
        skipped = [{"record_id": r, "reason": why} for r, why in unreadable]
        out = frame[frame["record_id"].isin(set(vectors.loc[readable, "record_id"]))].copy()
        by_record = dict(zip(vectors["record_id"], vectors["features"], strict=True))
        out["backbone"] = cfg.backbone
        out["features"] = [np.asarray(by_record[r], dtype=np.float32) for r in out["record_id"]]
        if readable.any():
            info["image_size"] = int(vectors.loc[readable, "side"].iloc[0])
        storage.write_json(f"{folder}/{SKIPPED_FILE}", skipped)
        storage.write_json(f"{folder}/{INFO_FILE}", info)
        return out, files

    return run_stage(storage, STAGE, output_folder(cfg, dataset), work)


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The ``features`` column as an (n, d) float32 array."""
    return np.stack(frame["features"].to_numpy()).astype(np.float32)
