"""The held-out detectors that the evaluation reports, trained with the main one so that one pass
over the images scores them all:

- **repeated splits**: the same training on ``evaluate.repeats`` grouped train/test splits
  (``split.seed``, ``split.seed + 1``, ...; the first is the main split), so that a figure is a
  mean and a spread, not one lucky split;
- **leave one family out**: on each of those splits, for every family of fill (``family``:
  pde, patch, learned, postprocessed), a detector trained without that family's images and
  tested on the split's real test images against that family's: how the detector does on a kind
  of fill it has never seen, the figure that predicts transfer to other tools;
- **leave one method out** (optional): the same for every single method.

Each is trained exactly as the main detector (``training``), with the main search's penalty; its k,
threshold and calibration are chosen on its own training data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from deepfake.detector import copyrule
from deepfake.detector.settings import SVMConfig
from deepfake.detector.training import (
    Fold,
    LinearModel,
    choose,
    fit_many,
    held_out_folds,
)
from deepfake.split.stage import grouped_split


@dataclass
class Protocol:
    """A detector trained on ``train`` and tested on ``test`` (positions in the whole frame)."""

    name: str
    repeat: int
    left_out: str | None  # the family or method left out, if any
    by: str | None  # "family" or "method": the column ``left_out`` is a value of
    train: np.ndarray
    test: np.ndarray
    folds: list[Fold] = field(default_factory=list)
    final: LinearModel | None = None


def plan(
    frame: pd.DataFrame, repeats: int, test_size: float, seed: int, leave_out: tuple[str, ...]
) -> list[Protocol]:
    """Every protocol's training and test images (no model yet); the first is the main split.
    ``leave_out``: the columns (``family``, ``method``) whose values are each left out in turn."""
    groups = frame["group"].to_numpy()
    is_real = frame["label"].to_numpy() == 0
    out = []
    for repeat in range(repeats):
        train, test = grouped_split(groups, test_size, seed + repeat)
        out.append(Protocol(f"split {repeat + 1}", repeat, None, None, train, test))
        for by in leave_out:
            values = sorted(frame.loc[~is_real, by].unique()) if by in frame else []
            if len(values) < 2:
                continue
            column = frame[by].to_numpy()
            for v in values:
                keep = train[is_real[train] | (column[train] != v)]
                held = test[is_real[test] | (column[test] == v)]
                if is_real[held].all():  # none of it in this split's test: nothing to measure
                    continue
                name = f"split {repeat + 1}, without {by} {v}"
                out.append(Protocol(name, repeat, v, by, keep, held))
    return out


def fit(
    protocols: list[Protocol], frame: pd.DataFrame, X: np.ndarray, y: np.ndarray,
    cell_rows: np.ndarray, alpha: float, cfg: SVMConfig, first_final: LinearModel | None = None,
) -> list[Protocol]:  # fmt: skip
    """Each protocol with its held-out folds and final model (cells of its training images),
    every model fitted in one parallel pass; ``first_final``, the first protocol's final model
    when the caller has fitted it already (the main detector)."""
    planned, subsets = [], []
    for number, protocol in enumerate(protocols):
        subset = frame.iloc[protocol.train].reset_index(drop=True)
        # Detectors that leave something out choose k and threshold on folds of photos only:
        # their point is what they never saw.
        folds = held_out_folds(subset, cfg, cross=protocol.left_out is None)
        absolute = [replace(f, held_out=protocol.train[f.held_out], train=protocol.train[f.train])
                    for f in folds]  # fmt: skip
        subsets += [np.isin(cell_rows, f.train) for f in absolute]
        if number or first_final is None:
            subsets.append(np.isin(cell_rows, protocol.train))
        planned.append((protocol, absolute))
    models = iter(fit_many(X, y, subsets, alpha, cfg))
    fitted = []
    for number, (protocol, folds) in enumerate(planned):
        folds = [replace(f, model=next(models)) for f in folds]
        final = first_final if number == 0 and first_final is not None else next(models)
        fitted.append(replace(protocol, folds=folds, final=final))
    return fitted


def models(protocols: list[Protocol]) -> list[LinearModel]:
    """Every model of ``protocols``, in the order ``results`` expects their decisions."""
    return [m for p in protocols for m in [*(f.model for f in p.folds), p.final]]


def results(
    protocols: list[Protocol],
    decisions: np.ndarray,
    copied: np.ndarray,
    frame: pd.DataFrame,
    top_k: tuple[int, ...],
) -> list[dict[str, Any]]:
    """Each protocol's choices (on its training data) and its test records' scores, from
    ``decisions`` (all images, cells, ``models(protocols)``) and the cells' copied shares
    ``copied`` (all images, cells) that the copy rule reads."""
    labels = frame["label"].to_numpy()
    share = copyrule.shares(copied)

    def rule_threshold(train: np.ndarray) -> float:
        return copyrule.calibrate(share[train][labels[train] == 0])

    out, column = [], 0
    for protocol in protocols:
        held, fires = {}, {}
        for fold in protocol.folds:
            held[fold.name] = decisions[fold.held_out, :, column]
            fires[fold.name] = share[fold.held_out] >= rule_threshold(fold.train)
            column += 1
        chosen = choose(protocol.folds, held, labels, top_k, fires)
        chosen["copy_threshold"] = rule_threshold(protocol.train)
        scores = copyrule.image_scores(decisions[protocol.test, :, column], chosen["top_k"],
                                       share[protocol.test], chosen["threshold"],
                                       chosen["copy_threshold"])  # fmt: skip
        column += 1
        out.append({
            "name": protocol.name,
            "repeat": protocol.repeat,
            "left_out": protocol.left_out,
            "left_out_by": protocol.by,
            **chosen,
            "test_record_ids": frame["record_id"].to_numpy()[protocol.test].tolist(),
            "test_scores": scores.astype(float).tolist(),
            # A repeated split's own cell model: the evaluation scores its test images again
            # after degradations (robustness over the splits).
            **({"final": {"weights": protocol.final.weights.astype(float).tolist(),
                          "bias": float(protocol.final.bias)}}
               if protocol.left_out is None and protocol.final is not None else {}),
        })  # fmt: skip
    return out
