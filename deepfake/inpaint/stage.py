"""The inpainting stage: every masked copy of every source, in resumable batches.

1. ``resolve_backend`` turns ``auto`` into a concrete backend (loudly, when it falls back).
2. ``plan`` finds the records still to do and writes them, numbered in batches, to a plan file.
3. ``run_planned_batch`` inpaints one batch: each image written atomically, then a batch
   manifest under ``batches/``. A rerun skips every record that is in a batch manifest and whose
   image exists, so a killed run redoes at most the batches it was in.
4. ``collect`` joins the batch manifests and the real images into the stage manifest.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from deepfake.hashing import digest_of, seed_of, sha256
from deepfake.images import ImageError, decode_read, encode_png
from deepfake.inpaint.base import Inpainter
from deepfake.inpaint.registry import BACKENDS, make_inpainter, resolve_backend
from deepfake.inpaint.settings import InpaintConfig
from deepfake.progress import Progress, chunks
from deepfake.stages import CODE_VERSION, StageOutput, finished, run_stage, stage_folder
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "inpainted"
BACKEND_NOTE = "backend.json"
# The variant (mask type column) of a whole-image reconstruction of a real image.
RECONSTRUCTED = "vae_roundtrip"


class InpaintPlan(BaseModel):
    """What is left to inpaint: small enough to pass between tasks and flows. ``code_version``
    is the library's that made the plan (and names its folder): a worker running other code
    refuses its batches."""

    model_config = ConfigDict(frozen=True)

    folder: str
    plan_file: str | None
    batches: int
    records: int
    cfg: InpaintConfig
    code_version: str = CODE_VERSION


class CodeMismatch(ValueError):
    """A batch planned by other library code than this worker's."""


class StaleAttempt(RuntimeError):
    """A batch run that has been sent again since it started: the newer run writes its outputs,
    this one must not (fencing)."""


def _fence(plan: InpaintPlan, index: int) -> str:
    return f"{plan.folder}/fences/{digest_of([plan.plan_file, index])[:16]}.json"


def send_attempt(storage: Storage, plan: InpaintPlan, index: int, attempt: int) -> None:
    """Record that attempt ``attempt`` of batch ``index`` is the one allowed to write: an older
    attempt that is still running (its worker only seemed lost) then stops before writing."""
    storage.write_json(_fence(plan, index), {"attempt": attempt})


def check_attempt(storage: Storage, plan: InpaintPlan, index: int, attempt: int | None) -> None:
    """``StaleAttempt`` when a newer attempt of this batch has been sent (``attempt`` None: a
    batch run outside any deployment, never fenced)."""
    if attempt is None or not storage.exists(_fence(plan, index)):
        return
    current = int(storage.read_json(_fence(plan, index))["attempt"])
    if current != attempt:
        raise StaleAttempt(
            f"batch {index} of {plan.folder}: this is attempt {attempt}, but attempt {current} "
            "has been sent since (this run was taken for lost); it writes nothing"
        )


def _settings_digest(cfg: InpaintConfig) -> str:
    """Only what shapes the output: the chosen backend and its own section (and the seed, for a
    backend that uses one), and the revision of the model it fills with, if any."""
    backend = BACKENDS[cfg.backend]
    section = getattr(cfg, cfg.backend)
    seed = {"seed": cfg.seed} if backend.uses_seed else {}
    revision = backend.revision(section)
    named = {"revision": revision} if revision is not None else {}
    return digest_of({"backend": cfg.backend, **section.result_dict(), **seed, **named})


def output_folder(cfg: InpaintConfig, sources: StageOutput, masks: StageOutput) -> str:
    if cfg.backend == "auto":
        raise ValueError("resolve inpaint.backend=auto before naming its output folder")
    packages = BACKENDS[cfg.backend].packages
    return stage_folder(STAGE, _settings_digest(cfg), sources, masks, packages=packages)


def record_seed(seed: int, record_id: str) -> int:
    """Per-record generator seed, so any one image can be regenerated alone."""
    return seed_of(f"{seed}:{record_id}", 4)


def _done_records(storage: Storage, folder: str) -> pd.DataFrame:
    files = storage.list_files(folder)
    frames = [
        storage.read_parquet(f"{folder}/{rel}")
        for rel in sorted(files)
        if rel.startswith("batches/")
    ]
    if not frames:
        return pd.DataFrame(columns=["record_id", "planned_id", "uri"])
    done = pd.concat(frames, ignore_index=True).drop_duplicates("record_id", keep="last")
    present = done["uri"].map(lambda u: u[len(folder) + 1 :] in files)
    return done[present]


def _write_reals(storage: Storage, inpainter: Inpainter, folder: str, sources: StageOutput) -> None:
    """Real counterparts for a resampling backend (skipping those already written)."""
    if not inpainter.resamples:
        return
    present = storage.list_files(f"{folder}/real")
    frame = storage.read_parquet(sources.manifest)
    todo = frame[~(frame["source_id"] + ".png").isin(present)]
    for part in chunks(list(todo.itertuples(index=False)), 64):
        uris = [r.uri for r in part]
        contents = dict(zip(uris, storage.read_many(uris), strict=True))
        storage.write_many(
            {
                f"{folder}/real/{r.source_id}.png": encode_png(
                    inpainter.real_counterpart(decode_read(contents[r.uri], r.uri))
                )
                for r in part
            }
        )


def plan(
    storage: Storage, cfg: InpaintConfig, sources: StageOutput, masks: StageOutput
) -> InpaintPlan:
    """Resolve the backend, write real counterparts, and plan the records still to inpaint."""
    cfg, note = resolve_backend(cfg)
    log.info("%s", note)
    folder = output_folder(cfg, sources, masks)
    record, uri = {"backend": cfg.backend, "note": note}, f"{folder}/{BACKEND_NOTE}"
    if not storage.exists(uri) or storage.read_json(uri) != record:  # a rerun touches nothing
        storage.write_json(uri, record)
    if finished(storage, STAGE, folder):
        return InpaintPlan(folder=folder, plan_file=None, batches=0, records=0, cfg=cfg)
    inpainter = make_inpainter(cfg)
    inpainter.prepare(storage, folder, storage.read_parquet(sources.manifest))
    _write_reals(storage, inpainter, folder, sources)
    frame = storage.read_parquet(masks.manifest)
    if inpainter.reconstructs:  # whole-image reconstructions of every source, as fakes
        real = storage.read_parquet(sources.manifest)
        frame = pd.concat([frame, real.assign(
            record_id=real["source_id"] + f"__{RECONSTRUCTED}", variant=RECONSTRUCTED,
            source_uri=real["uri"], uri="", coverage=1.0, label=1)[frame.columns]])  # fmt: skip
    frame = frame.sort_values("record_id")
    done = set(_done_records(storage, folder)["planned_id"])
    todo = frame[~frame["record_id"].isin(done)]
    if done:
        log.info("inpainting: %d of %d records already done in %s", len(done), len(frame), folder)
    rows = pd.DataFrame(
        {
            "record_id": todo["record_id"],
            "source_id": todo["source_id"],
            "group": todo["group"],
            "variant": todo["variant"],
            "source_uri": todo["source_uri"],
            "mask_uri": todo["uri"],
            "coverage": todo["coverage"].astype(float),
            "seed": [record_seed(cfg.seed, r) for r in todo["record_id"]],
        }
    ).reset_index(drop=True)
    rows["batch"] = rows.index // cfg.effective_batch_size
    if rows.empty:
        return InpaintPlan(folder=folder, plan_file=None, batches=0, records=0, cfg=cfg)
    key = digest_of([*rows["record_id"], cfg.effective_batch_size])[:16]
    plan_file = f"{folder}/plans/{key}.parquet"
    storage.write_parquet(plan_file, rows)
    batches = int(rows["batch"].max()) + 1
    return InpaintPlan(
        folder=folder, plan_file=plan_file, batches=batches, records=len(rows), cfg=cfg
    )


def _outputs(
    inpainter: Inpainter, records: list[dict[str, Any]], images: list[np.ndarray],
    masks: list[np.ndarray | None],
) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """Every record's outputs by variant name: the masked ones inpainted (a backend may make
    several variants of one), the reconstructions reconstructed."""
    masked = [i for i, m in enumerate(masks) if m is not None]
    whole = [i for i, m in enumerate(masks) if m is None]
    out: list[dict[str, np.ndarray]] = [{} for _ in records]
    if masked:
        filled = inpainter.inpaint([images[i] for i in masked], [masks[i] for i in masked],
                                   [int(records[i]["seed"]) for i in masked])  # fmt: skip
        for i, result in zip(masked, filled, strict=True):
            out[i] = inpainter.variants_of(images[i], masks[i], result)
    if whole:
        for i, result in zip(whole, inpainter.reconstruct([images[i] for i in whole]), strict=True):
            out[i] = {"": result}
    return out


def run_batch(
    storage: Storage,
    inpainter: Inpainter,
    folder: str,
    batch: list[dict[str, Any]],
    may_write: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Inpaint one batch; returns counts and images/s. Unreadable inputs are skipped, logged.
    ``may_write`` is called before the images and before the batch manifest are written, and
    raises when this run may no longer write (see ``check_attempt``)."""
    start = time.monotonic()
    images, masks, kept, failed = [], [], [], []
    uris = [u for rec in batch for u in (rec["source_uri"], rec["mask_uri"]) if u]
    contents = dict(zip(uris, storage.read_many(uris), strict=True))
    for rec in batch:
        try:
            image = decode_read(contents[rec["source_uri"]], rec["source_uri"])
            mask = decode_read(contents[rec["mask_uri"]], rec["mask_uri"]) if rec["mask_uri"] \
                else None  # fmt: skip
        except ImageError as exc:  # only what does not decode; other read errors are raised
            log.warning("inpainting: skipping %s: %s", rec["record_id"], exc)
            failed.append({"record_id": rec["record_id"], "reason": str(exc)})
            continue
        images.append(image)
        masks.append(mask)
        kept.append(rec)
    outputs = _outputs(inpainter, kept, images, masks) if kept else []
    backend = _backend_columns(inpainter)
    rows, written = [], {}
    # PNG compression releases the interpreter lock: encode on every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        encoded = [{name: pool.submit(encode_png, image) for name, image in variants.items()}
                   for variants in outputs]  # fmt: skip
    for rec, variants in zip(kept, encoded, strict=True):
        method = inpainter.method(int(rec["seed"]))
        for name, future in variants.items():
            data = future.result()
            record_id = f"{rec['record_id']}__{name}" if name else rec["record_id"]
            uri = f"{folder}/images/{record_id}.png"
            written[uri] = data
            rows.append({**rec, "record_id": record_id, "planned_id": rec["record_id"],
                         "uri": uri, "sha256": sha256(data), "label": 1,
                         "method": f"{method} {name}".strip() if rec["mask_uri"]
                         else f"{method} vae", "family": inpainter.family(method),
                         **backend})  # fmt: skip
    may_write()
    storage.write_many(written)
    if rows:
        may_write()
        key = digest_of([r["record_id"] for r in rows])[:16]
        storage.write_parquet(f"{folder}/batches/{key}.parquet", pd.DataFrame(rows))
    seconds = time.monotonic() - start
    return {
        "images": len(rows),
        "failed": failed,
        "seconds": seconds,
        "images_per_s": len(rows) / max(seconds, 1e-9),
    }


def run_planned_batch(
    storage: Storage, inpaint_plan: InpaintPlan, index: int, attempt: int | None = None
) -> dict[str, Any]:
    """Batch ``index`` of a plan, with the plan's (resolved) backend; ``attempt`` (sent to a
    deployment) is fenced: it writes only while no newer attempt has been sent."""
    if inpaint_plan.code_version != CODE_VERSION:
        raise CodeMismatch(
            f"this worker runs library code {CODE_VERSION}, but the plan in "
            f"{inpaint_plan.folder} was made by code {inpaint_plan.code_version}: its batches "
            "must be inpainted by the same code; update the worker (its image) to the "
            "pipeline's version"
        )
    if inpaint_plan.plan_file is None:
        raise ValueError("this plan has no batches")
    rows = storage.read_parquet(inpaint_plan.plan_file)
    batch = rows[rows["batch"] == index].drop(columns=["batch"]).to_dict("records")
    if not batch:
        raise ValueError(f"batch {index} is not in {inpaint_plan.plan_file}")
    check_attempt(storage, inpaint_plan, index, attempt)
    inpainter = make_inpainter(inpaint_plan.cfg)
    inpainter.load(storage, inpaint_plan.folder)
    return run_batch(storage, inpainter, inpaint_plan.folder, batch,
                     lambda: check_attempt(storage, inpaint_plan, index, attempt))  # fmt: skip


def _backend_columns(inpainter: Inpainter) -> dict[str, str]:
    info = inpainter.describe()
    return {"backend": str(info["backend"]), "backend_settings": json.dumps(info, sort_keys=True)}


def collect(storage: Storage, cfg: InpaintConfig, folder: str, sources: StageOutput) -> StageOutput:
    """Stage manifest: every real image (as the detector sees it) and every finished inpainting."""

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
        real = storage.read_parquet(sources.manifest)
        if make_inpainter(cfg).resamples:
            real["uri"] = [f"{folder}/real/{sid}.png" for sid in real["source_id"]]
            real["sha256"] = [sha256(storage.read_bytes(uri)) for uri in real["uri"]]
        real = real.assign(mask_uri="", coverage=0.0, method="", family="", backend="",
                           backend_settings="")  # fmt: skip
        fakes = _done_records(storage, folder)
        columns = [
            "record_id", "source_id", "group", "variant", "label", "uri", "sha256",
            "mask_uri", "coverage", "method", "family", "backend", "backend_settings",
        ]  # fmt: skip
        parts = [real[columns], fakes.reindex(columns=columns)] if len(fakes) else [real[columns]]
        return pd.concat(parts, ignore_index=True), []

    return run_stage(storage, STAGE, folder, work)


def backend_note(storage: Storage, dataset: StageOutput) -> dict[str, str]:
    uri = f"{dataset.folder}/{BACKEND_NOTE}"
    return storage.read_json(uri) if storage.exists(uri) else {}


def run_inpaint(
    storage: Storage, cfg: InpaintConfig, sources: StageOutput, masks: StageOutput
) -> StageOutput:
    """Plan, run every batch in this process, collect (the library path, without Prefect)."""
    inpaint_plan = plan(storage, cfg, sources, masks)
    progress = Progress(f"inpainting ({inpaint_plan.cfg.backend})", inpaint_plan.records)
    for index in range(inpaint_plan.batches):
        stats = run_planned_batch(storage, inpaint_plan, index)
        progress.advance(stats["images"] + len(stats["failed"]))
    return collect(storage, inpaint_plan.cfg, inpaint_plan.folder, sources)
