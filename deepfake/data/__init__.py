"""Sources: real images, normalised to square RGB PNGs, with a manifest.

A source that cannot be read is skipped with a warning naming it, and listed in ``skipped.json``
beside the manifest; the rest of the run goes on.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from PIL import Image

from deepfake.config import DataConfig
from deepfake.data.folder import folder_images
from deepfake.data.sample import sample_tiles
from deepfake.images import ImageError, decode, encode_png, sha256, square
from deepfake.stages import Progress, StageOutput, finished, stage_folder, write_manifest
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "sources"
SKIPPED = "skipped.json"


def _candidates(cfg: DataConfig) -> list[tuple[str, str, object]]:
    """(source id, group, loader) where loader() returns a PIL image or raises ImageError."""
    if cfg.source == "sample":
        return [
            (sid, group, tile)
            for sid, group, tile in sample_tiles(cfg.image_size, cfg.max_tiles_per_image)
        ]
    if cfg.source == "folder":
        if not cfg.path:
            raise ValueError("data.source=folder needs data.path=DIR")
        return [(sid, group, (store, rel)) for sid, group, rel, store in folder_images(cfg.path)]
    raise ValueError(f"unknown data.source {cfg.source!r}")


def _load(item: object, source_id: str) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    store, rel = item  # type: ignore[misc]
    name = store.uri(rel)
    try:
        data = store.read_bytes(rel)
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc})") from None
    return decode(data, name)


def choose_subset(ids: list[str], limit: int | None, seed: int) -> list[int]:
    """Indices of a reproducible subset of ``limit`` ids (all, when no limit)."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    if limit is None or limit >= len(ids):
        return order
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(order), size=limit, replace=False)
    return sorted((order[i] for i in picked), key=ids.__getitem__)


def run_sources(storage: Storage, cfg: DataConfig) -> StageOutput:
    folder = stage_folder(STAGE, cfg.digest())
    done = finished(storage, STAGE, folder)
    if done:
        log.info("sources: reusing %d finished records in %s", done.records, storage.uri(folder))
        return done

    candidates = _candidates(cfg)
    if not candidates:
        raise ValueError(f"no images found for data.source={cfg.source} (data.path={cfg.path})")
    chosen = [candidates[i] for i in choose_subset([c[0] for c in candidates], cfg.limit, cfg.seed)]
    rows, skipped = [], []
    progress = Progress("sources", len(chosen))
    for source_id, group, item in chosen:
        try:
            image = square(_load(item, source_id), cfg.image_size)
        except ImageError as exc:
            log.warning("skipping source %s", exc)
            skipped.append({"source_id": source_id, "reason": str(exc)})
            progress.advance()
            continue
        data = encode_png(np.asarray(image))
        uri = f"{folder}/images/{source_id}.png"
        storage.write_bytes(uri, data)
        rows.append(
            {
                "record_id": source_id,
                "source_id": source_id,
                "group": group,
                "variant": "real",
                "label": 0,
                "uri": uri,
                "sha256": sha256(data),
                "width": image.width,
                "height": image.height,
            }
        )
        progress.advance()
    if not rows:
        raise ValueError(f"none of the {len(chosen)} source images could be read: {skipped[:3]}")
    storage.write_json(f"{folder}/{SKIPPED}", skipped)
    return write_manifest(storage, STAGE, folder, pd.DataFrame(rows))


def skipped_sources(storage: Storage, sources: StageOutput) -> list[dict[str, str]]:
    uri = f"{sources.folder}/{SKIPPED}"
    return storage.read_json(uri) if storage.exists(uri) else []
