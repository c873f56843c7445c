"""The five mask shapes of the original project. White (255) = the region to inpaint.

The two diagonals of an image cut it into four half-image triangles; each diagonal mask covers one
of them, and its name says which half is white:

- ``diagonal_upper_left``:  above the anti-diagonal (bottom-left to top-right corner)
- ``diagonal_lower_right``: below the anti-diagonal (the complement of upper_left)
- ``diagonal_upper_right``: above the main diagonal (top-left to bottom-right corner)
- ``diagonal_lower_left``:  below the main diagonal (the complement of upper_right)

``random`` adds white rectangles (width W/16 to W/4, height H/16 to H/4) at random positions until
a coverage drawn from 40-60 % is reached, never going past 60 %. Its generator is seeded from
(mask seed, source id), so the same source and seed give the same mask, byte for byte.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from deepfake.config import MaskConfig
from deepfake.images import encode_png, sha256
from deepfake.stages import Progress, StageOutput, finished, stage_folder, write_manifest
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "masks"
RANDOM_COVERAGE = (0.40, 0.60)


def _centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y = (np.arange(height, dtype=np.float64)[:, None] + 0.5) / height
    x = (np.arange(width, dtype=np.float64)[None, :] + 0.5) / width
    return y, x


def diagonal_upper_left(height: int, width: int) -> np.ndarray:
    y, x = _centres(height, width)
    return np.where(x + y < 1.0, 255, 0).astype(np.uint8)


def diagonal_lower_right(height: int, width: int) -> np.ndarray:
    return 255 - diagonal_upper_left(height, width)


def diagonal_upper_right(height: int, width: int) -> np.ndarray:
    y, x = _centres(height, width)
    return np.where(y < x, 255, 0).astype(np.uint8)


def diagonal_lower_left(height: int, width: int) -> np.ndarray:
    return 255 - diagonal_upper_right(height, width)


def random_rectangles(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """White rectangles until a coverage drawn from [40 %, 60 %] is reached (never above 60 %)."""
    low, high = RANDOM_COVERAGE
    target = rng.uniform(low, high)
    mask = np.zeros((height, width), dtype=bool)
    total = height * width
    for _ in range(100_000):
        w = int(rng.integers(max(1, width // 16), max(2, width // 4) + 1))
        h = int(rng.integers(max(1, height // 16), max(2, height // 4) + 1))
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        trial = mask.copy()
        trial[y0 : y0 + h, x0 : x0 + w] = True
        if trial.sum() > high * total:
            continue  # this rectangle would overshoot 60 %: draw another
        mask = trial
        if mask.sum() >= target * total:
            break
    return np.where(mask, 255, 0).astype(np.uint8)


def _seed_for(seed: int, source_id: str, mask_type: str) -> int:
    digest = hashlib.sha256(f"{seed}:{source_id}:{mask_type}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


MASK_TYPES = {
    "diagonal_upper_left": diagonal_upper_left,
    "diagonal_upper_right": diagonal_upper_right,
    "diagonal_lower_left": diagonal_lower_left,
    "diagonal_lower_right": diagonal_lower_right,
    "random": random_rectangles,
}


def make_mask(mask_type: str, height: int, width: int, source_id: str, seed: int) -> np.ndarray:
    """The ``mask_type`` mask for one source: uint8 HxW, 255 = inpaint."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask type {mask_type!r}; choose from {list(MASK_TYPES)}")
    if mask_type == "random":
        rng = np.random.default_rng(_seed_for(seed, source_id, mask_type))
        return random_rectangles(height, width, rng)
    return MASK_TYPES[mask_type](height, width)


def run_masks(storage: Storage, cfg: MaskConfig, sources: StageOutput) -> StageOutput:
    folder = stage_folder(STAGE, cfg.digest(), sources)
    done = finished(storage, STAGE, folder)
    if done:
        log.info("masks: reusing %d finished masks in %s", done.records, storage.uri(folder))
        return done
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
    return write_manifest(storage, STAGE, folder, pd.DataFrame(rows))
