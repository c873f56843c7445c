"""The masks stage: every mask type of ``masks.types`` for every source, as PNGs with a manifest
(``coverage`` = the share of the image to inpaint)."""

from __future__ import annotations

import pandas as pd

from deepfake.hashing import sha256
from deepfake.images import encode_png
from deepfake.masks.settings import MaskConfig
from deepfake.masks.shapes import make_mask
from deepfake.progress import Progress
from deepfake.stages import StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

STAGE = "masks"
# The shapes are drawn with OpenCV from numpy random streams.
PACKAGES = ("opencv-python-headless|opencv-python", "numpy")


def make_masks(storage: Storage, cfg: MaskConfig, sources: StageOutput) -> StageOutput:
    """Every mask of every source, in ``masks/<digest>/<source>/<mask type>.png``."""

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
        frame = storage.read_parquet(sources.manifest)
        rows = []
        progress = Progress("masks", len(frame) * len(cfg.types), unit="masks")
        with storage.batched_writes(256) as put:
            for src in frame.itertuples(index=False):
                for mask_type in cfg.types:
                    mask = make_mask(
                        mask_type, int(src.height), int(src.width), src.source_id, cfg.seed
                    )
                    data = encode_png(mask)
                    uri = f"{folder}/{src.source_id}/{mask_type}.png"
                    put(uri, data)
                    rows.append(
                        {
                            "record_id": f"{src.source_id}__{mask_type}",
                            "source_id": src.source_id,
                            "group": src.group,
                            "variant": mask_type,
                            "label": 1,
                            "uri": uri,
                            "sha256": sha256(data),
                            "source_uri": src.uri,
                            "coverage": float((mask > 0).mean()),
                        }
                    )
                    progress.advance()
        return pd.DataFrame(rows), []

    folder = stage_folder(STAGE, cfg.digest(), sources, packages=PACKAGES)
    return run_stage(storage, STAGE, folder, work)
