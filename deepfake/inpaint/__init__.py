"""Inpainting stage: every masked copy of every source, in resumable batches.

Work is planned as batches of records. A batch writes each image atomically, then a batch
manifest under ``batches/``. A rerun skips every record that is in a batch manifest and whose
image exists, so a killed run redoes at most the batch it was in. ``collect`` joins the batch
manifests and the real images into the stage manifest that feature extraction reads.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import pandas as pd

from deepfake.config import InpaintConfig, digest_of
from deepfake.images import ImageError, decode_png_array, encode_png, sha256
from deepfake.inpaint.base import Inpainter
from deepfake.inpaint.classical import ClassicalInpainter
from deepfake.stages import Progress, StageOutput, chunks, finished, stage_folder, write_manifest
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "inpainted"
# Settings that change how fast the work goes, not what it produces.
_EXECUTION_ONLY = {"batch_size"}

__all__ = ["Inpainter", "make_inpainter", "plan_batches", "run_batch", "collect", "run_inpaint"]


def make_inpainter(cfg: InpaintConfig) -> Inpainter:
    if cfg.backend == "classical":
        return ClassicalInpainter(method=cfg.method, radius=cfg.radius)
    raise ValueError(f"unknown inpainting backend {cfg.backend!r}")


def output_folder(cfg: InpaintConfig, sources: StageOutput, masks: StageOutput) -> str:
    settings = digest_of(cfg.model_dump(mode="json", exclude=_EXECUTION_ONLY))
    return stage_folder(STAGE, settings, sources, masks)


def record_seed(seed: int, record_id: str) -> int:
    """Per-record generator seed, so any one image can be regenerated alone."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _done_records(storage: Storage, folder: str) -> pd.DataFrame:
    files = storage.list_files(folder)
    frames = [
        storage.read_parquet(f"{folder}/{rel}")
        for rel in sorted(files)
        if rel.startswith("batches/")
    ]
    if not frames:
        return pd.DataFrame(columns=["record_id", "uri"])
    done = pd.concat(frames, ignore_index=True).drop_duplicates("record_id", keep="last")
    present = done["uri"].map(lambda u: u[len(folder) + 1 :] in files)
    return done[present]


def plan_batches(
    storage: Storage, cfg: InpaintConfig, sources: StageOutput, masks: StageOutput
) -> tuple[str, list[list[dict[str, Any]]]]:
    """(output folder, batches of records still to inpaint); empty when all are done."""
    folder = output_folder(cfg, sources, masks)
    frame = storage.read_parquet(masks.manifest)
    done = set(_done_records(storage, folder)["record_id"])
    todo = [
        {
            "record_id": r.record_id,
            "source_id": r.source_id,
            "group": r.group,
            "variant": r.variant,
            "source_uri": r.source_uri,
            "mask_uri": r.uri,
            "coverage": float(r.coverage),
            "seed": record_seed(cfg.seed, r.record_id),
        }
        for r in frame.sort_values("record_id").itertuples(index=False)
        if r.record_id not in done
    ]
    if done:
        log.info("inpainting: %d of %d records already done in %s", len(done), len(frame), folder)
    return folder, list(chunks(todo, cfg.batch_size))


def run_batch(
    storage: Storage, inpainter: Inpainter, folder: str, batch: list[dict[str, Any]]
) -> dict[str, Any]:
    """Inpaint one batch; returns counts and images/s. Unreadable inputs are skipped, logged."""
    start = time.monotonic()
    images, masks, kept, failed = [], [], [], []
    for rec in batch:
        try:
            images.append(
                decode_png_array(storage.read_bytes(rec["source_uri"]), rec["source_uri"])
            )
            masks.append(decode_png_array(storage.read_bytes(rec["mask_uri"]), rec["mask_uri"]))
            kept.append(rec)
        except (ImageError, OSError) as exc:
            log.warning("inpainting: skipping %s: %s", rec["record_id"], exc)
            failed.append({"record_id": rec["record_id"], "reason": str(exc)})
    outputs = inpainter.inpaint(images, masks, [r["seed"] for r in kept]) if kept else []
    rows = []
    for rec, result in zip(kept, outputs, strict=True):
        data = encode_png(result)
        uri = f"{folder}/images/{rec['record_id']}.png"
        storage.write_bytes(uri, data)
        rows.append(
            {**rec, "uri": uri, "sha256": sha256(data), "label": 1, **_backend_columns(inpainter)}
        )
    if rows:
        key = hashlib.sha256("|".join(r["record_id"] for r in rows).encode()).hexdigest()[:16]
        storage.write_parquet(f"{folder}/batches/{key}.parquet", pd.DataFrame(rows))
    seconds = time.monotonic() - start
    return {
        "images": len(rows),
        "failed": failed,
        "seconds": seconds,
        "images_per_s": len(rows) / max(seconds, 1e-9),
    }


def _backend_columns(inpainter: Inpainter) -> dict[str, str]:
    info = inpainter.describe()
    return {"backend": str(info.get("backend")), "backend_settings": repr(sorted(info.items()))}


def collect(storage: Storage, folder: str, sources: StageOutput) -> StageOutput:
    """Stage manifest: every real source and every finished inpainting."""
    real = storage.read_parquet(sources.manifest)
    real = real.assign(mask_uri="", coverage=0.0, backend="", backend_settings="")
    fakes = _done_records(storage, folder)
    columns = [
        "record_id",
        "source_id",
        "group",
        "variant",
        "label",
        "uri",
        "sha256",
        "mask_uri",
        "coverage",
        "backend",
        "backend_settings",
    ]
    frame = pd.concat([real[columns], fakes[columns]], ignore_index=True)
    return write_manifest(storage, STAGE, folder, frame)


def run_inpaint(
    storage: Storage, cfg: InpaintConfig, sources: StageOutput, masks: StageOutput
) -> StageOutput:
    """Plan, run every batch in this process, collect."""
    folder = output_folder(cfg, sources, masks)
    done = finished(storage, STAGE, folder)
    if done:
        log.info("inpainting: reusing %d finished records in %s", done.records, storage.uri(folder))
        return done
    folder, batches = plan_batches(storage, cfg, sources, masks)
    inpainter = make_inpainter(cfg)
    progress = Progress(f"inpainting ({inpainter.name})", sum(len(b) for b in batches))
    for batch in batches:
        run_batch(storage, inpainter, folder, batch)
        progress.advance(len(batch))
    return collect(storage, folder, sources)
