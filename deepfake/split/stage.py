"""The held-out split, decided once, before anything learns from the data.

Split by source group: a source photo and all its inpaintings are always on the same side. The
stage manifest is the dataset's with a ``split`` column (``train`` or ``test``); fine-tuning and
the SVM both read it, so neither can see a test image.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from deepfake.split.settings import SplitConfig
from deepfake.stages import StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "split"
# The grouped splitter and its random streams.
PACKAGES = ("scikit-learn", "numpy")


def grouped_split(groups: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) with no group on both sides; both sides non-empty."""
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"a grouped split needs at least 2 source groups, got {len(unique)}")
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(train), np.sort(test)


def split_dataset(storage: Storage, cfg: SplitConfig, dataset: StageOutput) -> StageOutput:
    """The dataset's manifest with a ``split`` column (``train`` or ``test``), by source group."""

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
        frame = storage.read_parquet(dataset.manifest)
        groups = frame["group"].to_numpy()
        train, test = grouped_split(groups, cfg.test_size, cfg.seed)
        frame["split"] = "train"
        frame.loc[test, "split"] = "test"
        log.info(
            "split: %d training images (%d groups), %d test images (%d groups: %s)",
            len(train),
            len(np.unique(groups[train])),
            len(test),
            len(np.unique(groups[test])),
            ", ".join(sorted(np.unique(groups[test]).astype(str))[:10]),
        )
        return frame, []

    folder = stage_folder(STAGE, cfg.digest(), dataset, packages=PACKAGES)
    return run_stage(storage, STAGE, folder, work)


def split_rows(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of ``frame`` on one side of the split; a clear error when there is no split."""
    if "split" not in frame:
        raise ValueError("this manifest has no 'split' column: run the split stage first")
    return frame[frame["split"] == name]
