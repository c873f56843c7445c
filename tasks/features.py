from __future__ import annotations

from prefect import task

from deepfake import features  # the stage loads torch when it runs, not on import
from deepfake.config import FeaturesConfig, StorageConfig
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="extract-features", **TASK_DEFAULTS)
def extract_features(
    storage: StorageConfig, cfg: FeaturesConfig, dataset: StageOutput
) -> StageOutput:
    """CNN features of every real and inpainted image."""
    return features.extract_features(Storage.open(storage), cfg, dataset)
