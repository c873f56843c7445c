"""The sources stage: real images, normalised to square RGB PNGs, with a manifest.

A source that cannot be read is skipped with a warning naming it, and listed in ``skipped.json``
beside the manifest; the rest of the run goes on.
"""

from __future__ import annotations

import pandas as pd

from deepfake.sources.common import EXTERNAL
from deepfake.sources.registry import get_source
from deepfake.sources.settings import DataConfig
from deepfake.stages import StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

STAGE = "sources"
SKIPPED = "skipped.json"


def prepare_sources(storage: Storage, cfg: DataConfig) -> StageOutput:
    """The chosen source's images in ``sources/<digest>/images/``."""

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
        rows, skipped = get_source(cfg.source).prepare(storage, cfg, folder)
        storage.write_json(f"{folder}/{SKIPPED}", skipped)
        return pd.DataFrame(rows), []

    return run_stage(storage, STAGE, stage_folder(STAGE, cfg.digest()), work)


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
