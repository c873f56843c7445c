from __future__ import annotations

from prefect import task

from deepfake import detector  # the stage loads torch when it runs, not on import
from deepfake.config import StorageConfig, SVMConfig
from deepfake.detector.settings import HeldOut
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="train-detector", **TASK_DEFAULTS)
def train_detector(
    storage: StorageConfig, cfg: SVMConfig, features: StageOutput, protocols: HeldOut | None = None
) -> StageOutput:
    """The cell SVM on the training split, its choices made on held-out data; every record's
    score and heat map; with ``protocols``, the held-out detectors the evaluation reports."""
    return detector.train_detector(Storage.open(storage), cfg, features, protocols)
