from __future__ import annotations

from prefect import task

from deepfake.config import InpaintConfig
from deepfake.inpaint import run_inpaint
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="inpaint", **TASK_DEFAULTS)
def inpaint_images(
    storage: str, cfg: InpaintConfig, sources: StageOutput, masks: StageOutput
) -> StageOutput:
    """Every masked copy inpainted; the manifest also lists the real images."""
    return run_inpaint(Storage(storage), cfg, sources, masks)
