from __future__ import annotations

from prefect import task

from deepfake.config import DataConfig, StorageConfig
from deepfake.sources import stage
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="prepare-sources", **TASK_DEFAULTS)
def prepare_sources(storage: StorageConfig, cfg: DataConfig) -> StageOutput:
    """Real source images, normalised, with their manifest."""
    return stage.prepare_sources(Storage.open(storage), cfg)
