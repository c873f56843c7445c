from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from deepfake.config import InpaintConfig, StorageConfig
from deepfake.inpaint.stage import InpaintPlan, collect, plan
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="plan-inpainting", **{**TASK_DEFAULTS, "cache_policy": NO_CACHE})
def plan_inpainting(
    storage: StorageConfig, cfg: InpaintConfig, sources: StageOutput, masks: StageOutput
) -> InpaintPlan:
    """Choose the backend and list the batches still to do (none when the stage is finished)."""
    return plan(Storage.open(storage), cfg, sources, masks)


@task(name="collect-inpainting", **TASK_DEFAULTS)
def collect_inpainting(
    storage: StorageConfig, cfg: InpaintConfig, folder: str, sources: StageOutput
) -> StageOutput:
    """The stage manifest: real images and every finished inpainting."""
    return collect(Storage.open(storage), cfg, folder, sources)
