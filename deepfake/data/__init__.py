"""Sources: real images, normalised to square RGB PNGs, with a manifest.

A source that cannot be read is skipped with a warning naming it, and listed in ``skipped.json``
beside the manifest; the rest of the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image

from deepfake.config import DataConfig
from deepfake.data import kaggle
from deepfake.data.folder import folder_images
from deepfake.data.sample import sample_tiles
from deepfake.images import ImageError, decode, encode_png, sha256, square
from deepfake.stages import Progress, StageOutput, finished, stage_folder, write_manifest
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "sources"
SKIPPED = "skipped.json"
EXTERNAL = "external.parquet"


def _candidates(cfg: DataConfig, storage: Storage) -> list[tuple[str, str, object]]:
    """(source id, group, loader) where loader() returns a PIL image or raises ImageError."""
    if cfg.source == "sample":
        return [
            (sid, group, tile)
            for sid, group, tile in sample_tiles(cfg.image_size, cfg.max_tiles_per_image)
        ]
    if cfg.source == "folder":
        if not cfg.path:
            raise ValueError("data.source=folder needs data.path=DIR")
        return [
            (sid, group, (store, rel))
            for sid, group, rel, store in folder_images(cfg.path, storage)
        ]
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


def _source_row(
    put: Callable[[str, bytes], None], folder: str, source_id: str, group: str, image
) -> dict:
    data = encode_png(np.asarray(image))
    uri = f"{folder}/images/{source_id}.png"
    put(uri, data)
    return {
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


def _run_kaggle(storage: Storage, cfg: DataConfig, folder: str) -> tuple[list, list]:
    """Sources from DeepfakeArt originals; the authors' inpaintings into ``external.parquet``."""
    rows, skipped, external = [], [], {}
    with (
        kaggle.local_archive(storage, cfg.kaggle_dataset, cfg.kaggle_archive) as path,
        storage.batched_writes() as put,
    ):
        folders = kaggle.list_folders(path)
        for fid in sorted(folders):
            if "original" not in folders[fid]:
                reason = f"similar/inpainting/{fid}: no original.png"
                skipped.append({"source_id": fid, "reason": reason})
        usable = sorted(fid for fid, roles in folders.items() if "original" in roles)
        if not usable:
            raise ValueError(f"{path}: no similar/inpainting/<id>/original.png found")
        chosen = {usable[i] for i in choose_subset(usable, cfg.limit, cfg.seed)}
        progress = Progress("kaggle sources", len(chosen))
        for fid, role, data, problem in kaggle.read_folders(path, chosen, cfg.max_extract_bytes):
            if problem is not None:
                log.warning("kaggle: %s", problem)
                skipped.append({"source_id": fid or "archive", "reason": problem})
                continue
            name = f"{path}: similar/inpainting/{fid}/{role}.png"
            try:
                image = decode(data or b"", name)
            except ImageError as exc:
                log.warning("skipping %s", exc)
                skipped.append({"source_id": fid, "reason": str(exc)})
                continue
            if role == "original":
                rows.append(_source_row(put, folder, fid, fid, square(image, cfg.image_size)))
                progress.advance()
            elif role == "inpainting":
                png = encode_png(np.asarray(square(image, cfg.image_size)))
                uri = f"{folder}/external/{fid}.png"
                put(uri, png)
                external.setdefault(fid, {}).update(uri=uri, sha256=sha256(png))
            else:
                mask = square(image.convert("L"), cfg.image_size, Image.Resampling.NEAREST)
                uri = f"{folder}/external/{fid}_mask.png"
                put(uri, encode_png(np.asarray(mask)))
                external.setdefault(fid, {})["mask_uri"] = uri
    originals = {row["source_id"] for row in rows}
    ext_rows = [
        {
            "record_id": f"{fid}__external",
            "source_id": fid,
            "group": fid,
            "variant": "external",
            "label": 1,
            "uri": item["uri"],
            "sha256": item["sha256"],
            "mask_uri": item.get("mask_uri", ""),
        }
        for fid, item in sorted(external.items())
        if fid in originals and "uri" in item
    ]
    columns = ["record_id", "source_id", "group", "variant", "label", "uri", "sha256", "mask_uri"]
    storage.write_parquet(f"{folder}/{EXTERNAL}", pd.DataFrame(ext_rows, columns=columns))
    log.info("kaggle: %d sources, %d external inpaintings", len(rows), len(ext_rows))
    return rows, skipped


def run_sources(storage: Storage, cfg: DataConfig) -> StageOutput:
    folder = stage_folder(STAGE, cfg.digest())
    done = finished(storage, STAGE, folder)
    if done:
        log.info("sources: reusing %d finished records in %s", done.records, storage.uri(folder))
        return done
    if cfg.source == "kaggle":
        rows, skipped = _run_kaggle(storage, cfg, folder)
        storage.write_json(f"{folder}/{SKIPPED}", skipped)
        return write_manifest(storage, STAGE, folder, pd.DataFrame(rows))

    candidates = _candidates(cfg, storage)
    if not candidates:
        raise ValueError(f"no images found for data.source={cfg.source} (data.path={cfg.path})")
    chosen = [candidates[i] for i in choose_subset([c[0] for c in candidates], cfg.limit, cfg.seed)]
    rows, skipped = [], []
    progress = Progress("sources", len(chosen))
    with storage.batched_writes() as put:
        for source_id, group, item in chosen:
            progress.advance()
            try:
                image = square(_load(item, source_id), cfg.image_size)
            except ImageError as exc:
                log.warning("skipping source %s", exc)
                skipped.append({"source_id": source_id, "reason": str(exc)})
                continue
            rows.append(_source_row(put, folder, source_id, group, image))
    if not rows:
        raise ValueError(f"none of the {len(chosen)} source images could be read: {skipped[:3]}")
    storage.write_json(f"{folder}/{SKIPPED}", skipped)
    return write_manifest(storage, STAGE, folder, pd.DataFrame(rows))


def external_records(storage: Storage, sources: StageOutput) -> pd.DataFrame | None:
    """The external test set (Kaggle authors' own inpaintings), when the source has one."""
    uri = f"{sources.folder}/{EXTERNAL}"
    return storage.read_parquet(uri) if storage.exists(uri) else None


def skipped_sources(storage: Storage, sources: StageOutput) -> list[dict[str, str]]:
    uri = f"{sources.folder}/{SKIPPED}"
    return storage.read_json(uri) if storage.exists(uri) else []
