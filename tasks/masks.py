from __future__ import annotations

from prefect import task

from deepfake.config import MaskConfig, StorageConfig
from deepfake.masks import stage
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="make-masks", **TASK_DEFAULTS)
def make_masks(storage: StorageConfig, cfg: MaskConfig, sources: StageOutput) -> StageOutput:
    """Every mask type of every source."""
    return stage.make_masks(Storage.open(storage), cfg, sources)
