from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from deepfake.config import DataConfig, StorageConfig
from deepfake.sources import stage
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="fingerprint-sources", **{**TASK_DEFAULTS, "cache_policy": NO_CACHE,
                                     "persist_result": False})  # fmt: skip
def fingerprint_sources(storage: StorageConfig, cfg: DataConfig) -> str:
    """Digest of the data the source would read now (a folder's listing with content digests,
    an archive's digest): never cached, so that new data is always seen."""
    return stage.source_inputs(Storage.open(storage), cfg)


@task(name="prepare-sources", **TASK_DEFAULTS)
def prepare_sources(
    storage: StorageConfig, cfg: DataConfig, inputs: str | None = None
) -> StageOutput:
    """Real source images, normalised, with their manifest. The pipeline passes ``inputs``
    (``fingerprint_sources``): the task's cache key then covers the data, not only the settings;
    without it the stage computes the digest itself."""
    return stage.prepare_sources(Storage.open(storage), cfg, inputs)
