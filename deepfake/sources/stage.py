"""The sources stage: real images, normalised to square RGB PNGs, with a manifest.

A source that cannot be read is skipped with a warning naming it, and listed in ``skipped.json``
beside the manifest; the rest of the run goes on.
"""

from __future__ import annotations

import pandas as pd

from deepfake.hashing import digest_of
from deepfake.sources.common import EXTERNAL
from deepfake.sources.registry import get_source
from deepfake.sources.settings import DataConfig
from deepfake.stages import StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

STAGE = "sources"
SKIPPED = "skipped.json"
PACKAGES = ("pillow", "numpy")  # decoding and resizing


def source_inputs(storage: Storage, cfg: DataConfig) -> str:
    """Digest of what the chosen source would read now (see the registry's ``inputs``)."""
    return digest_of(get_source(cfg.source).inputs(storage, cfg))


def prepare_sources(storage: Storage, cfg: DataConfig, inputs: str | None = None) -> StageOutput:
    """The chosen source's images in ``sources/<digest>/images/``; the digest covers the
    settings and ``inputs`` (``source_inputs``, computed here when not given): new, removed or
    changed input files make a new folder, unchanged ones find the finished one."""
    inputs = inputs or source_inputs(storage, cfg)

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
        rows, skipped = get_source(cfg.source).prepare(storage, cfg, folder)
        storage.write_json(f"{folder}/{SKIPPED}", skipped)
        return pd.DataFrame(rows), []

    folder = stage_folder(STAGE, digest_of([cfg.digest(), inputs]), packages=PACKAGES)
    return run_stage(storage, STAGE, folder, work)


def preflight_source(storage: Storage, cfg: DataConfig) -> None:
    """Raise ``Unavailable`` when the chosen source cannot be used as configured."""
    get_source(cfg.source).preflight(storage, cfg)


def external_records(storage: Storage, sources: StageOutput) -> pd.DataFrame | None:
    """The external test set (Kaggle authors' own inpaintings), when the source has one."""
    uri = f"{sources.folder}/{EXTERNAL}"
    return storage.read_parquet(uri) if storage.exists(uri) else None


def skipped_sources(storage: Storage, sources: StageOutput) -> list[dict[str, str]]:
    uri = f"{sources.folder}/{SKIPPED}"
    return storage.read_json(uri) if storage.exists(uri) else []
