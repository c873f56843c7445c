"""The evaluation's plots, as PNG bytes: ROC, precision-recall, confusion matrix, per mask type,
robustness, and a grid of example test images with their scores."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from deepfake.storage import Storage  # noqa: E402


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def curves(scored: pd.DataFrame, threshold: float) -> dict[str, bytes]:
    """ROC, precision-recall and confusion-matrix PNGs of the test split."""
    test = scored[scored["split"] == "test"]
    y, s = test["label"].to_numpy(), test["score"].to_numpy()
    out = {}
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    fpr, tpr, _ = roc_curve(y, s)
    ax.plot(fpr, tpr, label=f"all (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test split)")
    ax.legend(loc="lower right")
    out["roc.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    precision, recall, _ = precision_recall_curve(y, s)
    ax.plot(recall, precision, label=f"AP {average_precision_score(y, s):.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test split)")
    ax.legend(loc="lower left")
    out["pr.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay(
        confusion_matrix(y, (s >= threshold).astype(int), labels=[0, 1]),
        display_labels=["real", "inpainted"],
    ).plot(ax=ax, colorbar=False)
    ax.set_title("Confusion matrix (test split)")
    out["confusion_matrix.png"] = _png(fig)
    return out


def example_grid(storage: Storage, scored: pd.DataFrame, threshold: float, n: int = 4) -> bytes:
    """Test images with their scores: the ``n`` most and least confident of each class."""
    from deepfake.images import decode_png_array

    test = scored[scored["split"] == "test"].sort_values("score")
    picks = []
    for label in (0, 1):
        part = test[test["label"] == label]
        half = max(1, n // 2)
        picks += list(
            pd.concat([part.head(half), part.tail(half)]).drop_duplicates("record_id").itertuples()
        )
    fig, axes = plt.subplots(2, len(picks) // 2 or 1, figsize=(2.2 * max(1, len(picks) // 2), 5))
    for ax, row in zip(np.ravel(axes), picks, strict=False):
        ax.imshow(decode_png_array(storage.read_bytes(row.uri), row.uri))
        said = "inpainted" if row.score >= threshold else "real"
        truth = "real" if row.label == 0 else row.variant
        ax.set_title(f"{truth}\nscore {row.score:.2f} -> {said}", fontsize=7)
        ax.axis("off")
    return _png(fig)


def summary_plots(metrics: dict[str, Any]) -> dict[str, bytes]:
    """Per-mask-type ROC-AUC bars and the robustness curve."""
    out = {}
    per_mask = metrics["per_mask_type"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(per_mask)
    ax.barh(names, [per_mask[n]["roc_auc"] or 0 for n in names], color="tab:blue")
    ax.set(xlim=(0.5, 1.0), xlabel="ROC-AUC", title="Per mask type (test split)")
    out["per_mask.png"] = _png(fig)
    if metrics.get("robustness"):
        table = metrics["robustness"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        tuned = bool(metrics.get("finetune"))
        label = "fine-tuned backbone" if tuned else "this detector"
        ax.plot(list(table), [table[k]["roc_auc"] or 0 for k in table], marker="o", label=label)
        frozen = metrics.get("comparison", {}).get("frozen", {}).get("robustness_roc_auc")
        if frozen:
            ax.plot(list(frozen), [v or 0 for v in frozen.values()], marker="s", ls="--",
                    label="frozen backbone")  # fmt: skip
        ax.set(ylim=(0.5, 1.0), ylabel="ROC-AUC", title="Robustness (test split)")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(loc="lower left")
        out["robustness.png"] = _png(fig)
    return out
