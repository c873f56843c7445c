"""Robustness over the repeated splits: each split's own detector scores its test images again
after the degradations the targets name (JPEG 80, downscaling by 0.5), so that robustness is a
mean over splits like the other held-out figures, not the main split's alone.

The main split's figures are the robustness table's; the other splits' detectors are the linear
cell models the detector stage kept in ``protocols.json``, scored in one pass over the union of
their test images per degradation, with the same aggregation and copy rule as their clean
scores.

The same scores are also split by the method that made the fill (``protocol_figures.by_fill``):
which fills a degradation hides from the detector, and what the figures are without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from deepfake.detector import copyrule
from deepfake.detector.bundle import Detector
from deepfake.detector.scoring import score_uris
from deepfake.evaluate.metrics import binary_metrics
from deepfake.evaluate.protocol_figures import by_fill, summarise
from deepfake.progress import Progress
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

DEGRADATIONS = ("jpeg_80", "downscale_0.5")


def split_protocols(protocols: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The repeated splits after the main one whose cell models were kept."""
    return [p for p in protocols if p["left_out"] is None and "final" in p]


def split_scores(
    storage: Storage,
    detector: Detector,
    scored: pd.DataFrame,
    protocols: list[dict[str, Any]],
    transform: Callable[[np.ndarray], np.ndarray] | None,
) -> list[np.ndarray]:
    """Each protocol's test scores (in its ``test_record_ids`` order), its images degraded by
    ``transform`` (None: as stored, which gives back its clean scores)."""
    if not protocols:
        return []
    ids = sorted(set().union(*(p["test_record_ids"] for p in protocols)))
    position = {record: i for i, record in enumerate(ids)}
    uris = list(scored.set_index("record_id").loc[ids, "uri"])
    weights, biases = copyrule.with_channel(
        [np.asarray(p["final"]["weights"]) for p in protocols],
        [p["final"]["bias"] for p in protocols],
        detector.extractor,
    )
    decisions = score_uris(detector.extractor, storage, uris, weights, biases,
                           read=lambda uri, data: detector.normalise(data, uri),
                           transform=transform)  # fmt: skip
    share = copyrule.shares(decisions[..., -1])
    # Without the copy rule (svm.copy_rule=false) the bundle has none and no cell is copied.
    rule = detector.meta.get("copy_rule") is not None
    out = []
    for column, protocol in enumerate(protocols):
        rows = [position[record] for record in protocol["test_record_ids"]]
        copy = protocol["copy_threshold"] if rule else np.inf
        out.append(copyrule.image_scores(decisions[rows, :, column], protocol["top_k"],
                                         share[rows], protocol["threshold"], copy))  # fmt: skip
    return out


def robustness_over_splits(
    storage: Storage,
    detector: Detector,
    scored: pd.DataFrame,
    main: dict[str, Any],
    protocols: list[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per degradation, figures over the splits (mean, std, per split; the main split first),
    and the same scores ``by_fill`` (clean and degraded). ``main``: the main split in the protocols'
    form (``test_record_ids``, clean ``test_scores``) with its robustness table
    (``robustness``) and its degraded test scores (``degraded``: degradation -> scores)."""
    from deepfake.perturb import PERTURBATIONS

    others = split_protocols(protocols)
    labels = scored.set_index("record_id")["label"]
    progress = Progress("robustness over the splits", len(DEGRADATIONS), "degradations",
                        log=False)  # fmt: skip
    out = {}
    conditions = [{"clean": np.asarray(p["test_scores"])} for p in [main, *others]]
    for name in DEGRADATIONS:
        per_split = [main["robustness"][name]]
        scores = split_scores(storage, detector, scored, others, PERTURBATIONS[name])
        for protocol, values in zip(others, scores, strict=True):
            y = labels.loc[protocol["test_record_ids"]].to_numpy()
            per_split.append(binary_metrics(y, values, protocol["threshold"]))
        for condition, values in zip(conditions, [main["degraded"][name], *scores], strict=True):
            condition[name] = values
        out[name] = summarise(per_split)
        values = ", ".join(f"{m['roc_auc']:.4f}" for m in per_split if m["roc_auc"] is not None)
        log.info("robustness over %d splits: %s -> ROC-AUC %s", len(per_split), name, values)
        progress.advance()
    ids = [p["test_record_ids"] for p in [main, *others]]
    return out, by_fill(scored, list(zip(ids, conditions, strict=True)))
