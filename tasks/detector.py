from __future__ import annotations

from prefect import task

from deepfake import detector
from deepfake.config import StorageConfig, SVMConfig
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="train-detector", **TASK_DEFAULTS)
def train_detector(storage: StorageConfig, cfg: SVMConfig, features: StageOutput) -> StageOutput:
    """Grouped grid search of the SVM; test-split scores of every record."""
    return detector.train_detector(Storage.open(storage), cfg, features)
