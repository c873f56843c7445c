from __future__ import annotations

from prefect import task

from deepfake import split
from deepfake.config import SplitConfig, StorageConfig
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="split-dataset", **TASK_DEFAULTS)
def split_dataset(storage: StorageConfig, cfg: SplitConfig, dataset: StageOutput) -> StageOutput:
    """The grouped train/test split, fixed before anything learns from the data."""
    return split.split_dataset(Storage.open(storage), cfg, dataset)
