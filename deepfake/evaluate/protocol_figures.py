"""Figures of the protocols: the held-out detectors trained in the detector stage
(``protocols.json``): the same detector on other grouped splits, and without each inpainting
method in turn; and any of these split by the method that made the fill (``by_fill``).

Each protocol's figures are at its own threshold (chosen on its own training data). A figure
over protocols is given as mean, std and the values per split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from deepfake.evaluate.metrics import binary_metrics, recall_at_fpr
from deepfake.evaluate.names import PROTOCOL_FIGURES


def protocol_figures(
    scored: pd.DataFrame, record_ids: list[str], scores: list[float], threshold: float
) -> dict[str, Any]:
    """One protocol's figures on its test records."""
    rows = scored.set_index("record_id").loc[record_ids]
    y, s = rows["label"].to_numpy(), np.asarray(scores)
    figures = {k: v for k, v in binary_metrics(y, s, threshold).items() if k in PROTOCOL_FIGURES}
    small = (rows["label"].to_numpy() == 0) | (rows["coverage"].to_numpy() < 0.10)
    figures["recall_at_5pct_fpr_small"] = recall_at_fpr(y[small], s[small])
    figures["n_real"], figures["n_inpainted"] = int((y == 0).sum()), int((y == 1).sum())
    return figures


def summarise(per_split: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std (over splits) of every figure, and the values."""
    out: dict[str, Any] = {"splits": len(per_split)}
    for key in PROTOCOL_FIGURES:
        values = [p[key] for p in per_split if p.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_std"] = float(np.std(values)) if values else None
        out[f"{key}_per_split"] = values
    return out


def held_out(
    scored: pd.DataFrame, main: dict[str, Any], protocols: list[dict[str, Any]]
) -> dict[str, Any]:
    """``repeated_splits`` (the main split and the others), ``leave_one_family_out`` and
    ``leave_one_method_out`` (what was left out -> figures over the splits), and the weakest
    family. ``main``: the main detector's test records, scores and threshold, in the protocols'
    form."""
    everything = [main, *protocols]
    figures = [protocol_figures(scored, p["test_record_ids"], p["test_scores"], p["threshold"])
               for p in everything]  # fmt: skip
    pairs = list(zip(everything, figures, strict=True))
    out: dict[str, Any] = {
        "repeated_splits": summarise([f for p, f in pairs if p["left_out"] is None]),
        "balanced_accuracy_at_threshold": {p["name"]: f["balanced_accuracy"] for p, f in pairs},
    }
    for by in ("family", "method"):
        chosen = [(p, f) for p, f in pairs if p["left_out"] and _by(p) == by]
        values = sorted({p["left_out"] for p, _ in chosen})
        if values:
            out[f"leave_one_{by}_out"] = {
                v: _left_out(scored, [(p, f) for p, f in chosen if p["left_out"] == v], by)
                for v in values
            }
    families = out.get("leave_one_family_out")
    if families:
        out["weakest_family"] = min(families, key=lambda v: (families[v]["roc_auc"] or 0, v))
    return out


def _left_out(
    scored: pd.DataFrame, runs: list[tuple[dict[str, Any], dict[str, Any]]], by: str
) -> dict[str, Any]:
    """What one left-out family or method's protocols (each with its figures) give over the
    splits; for a family, also which of its fills the detector misses (its test scores by fill)."""
    figures = summarise([f for _, f in runs])
    if by == "family":
        left = [(p["test_record_ids"], {"scores": np.asarray(p["test_scores"])}) for p, _ in runs]
        figures["by_fill"] = {m: {"n_inpainted": e["n_inpainted"], **e["scores"]}
                              for m, e in by_fill(scored, left).items()}  # fmt: skip
    return figures


def _by(protocol: dict[str, Any]) -> str:
    # Protocols written before families were left out carry no "left_out_by": methods.
    return protocol.get("left_out_by") or "method"


def fill_method(method: str) -> str:
    """The method that made a fill, without the post-processing after it (``ns+poisson``: ns)."""
    return method.split("+")[0]


def by_fill(
    scored: pd.DataFrame, splits: list[tuple[list[str], dict[str, np.ndarray]]]
) -> dict[str, Any]:
    """Per fill method (``fill_method``) and condition (clean, a degradation...), over the
    ``splits`` (each its test record ids and, per condition, their scores in that order): the
    ROC-AUC of the split's real test images against that method's fills (``roc_auc``) and
    against every other fill (``roc_auc_without``), mean and per split; ``n_inpainted``, its
    fills over the splits. Empty when the records name no method."""
    if "method" not in scored:
        return {}
    rows = scored.set_index("record_id")
    out: dict[str, Any] = {}
    for ids, conditions in splits:
        y = rows.loc[ids, "label"].to_numpy()
        fills = np.array([fill_method(str(m)) for m in rows.loc[ids, "method"]])
        for method in sorted(set(fills[y == 1])):
            mine = (y == 1) & (fills == method)
            entry = out.setdefault(method, {"n_inpainted": 0})
            entry["n_inpainted"] += int(mine.sum())
            for condition, scores in conditions.items():
                empty = {"roc_auc_per_split": [], "roc_auc_without_per_split": []}
                figures = entry.setdefault(condition, empty)
                for key, keep in (("roc_auc", mine), ("roc_auc_without", (y == 1) & ~mine)):
                    chosen = (y == 0) | keep
                    if keep.any() and (y[chosen] == 0).any():
                        figures[f"{key}_per_split"].append(
                            float(roc_auc_score(y[chosen], scores[chosen]))
                        )
    for entry in out.values():
        for condition, figures in entry.items():
            if condition == "n_inpainted":
                continue
            for key in ("roc_auc", "roc_auc_without"):
                values = figures[f"{key}_per_split"]
                figures[key] = float(np.mean(values)) if values else None
    return out
