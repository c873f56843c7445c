"""The evaluation's plots, as PNG bytes: ROC, precision-recall, confusion matrix, per mask type,
robustness, and a grid of example test images with their scores."""

from __future__ import annotations

import io
from collections.abc import Callable
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


def curves(
    scored: pd.DataFrame, threshold: float, probabilities: Callable[[np.ndarray], np.ndarray]
) -> dict[str, bytes]:
    """ROC, precision-recall, confusion-matrix and reliability PNGs of the test split
    (``probabilities`` turns scores into the detector's calibrated probabilities)."""
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

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    p = probabilities(s)
    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, bins) - 1, 0, 9)
    said = [p[which == b].mean() for b in range(10) if (which == b).any()]
    seen = [y[which == b].mean() for b in range(10) if (which == b).any()]
    counts = [int((which == b).sum()) for b in range(10) if (which == b).any()]
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.plot(said, seen, marker="o")
    for x, v, c in zip(said, seen, counts, strict=True):
        ax.annotate(str(c), (x, v), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set(xlabel="predicted probability of inpainting", ylabel="share inpainted",
           title="Reliability (test split; n per bin)", xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    out["reliability.png"] = _png(fig)
    return out


def example_grid(storage: Storage, scored: pd.DataFrame, detector: Any, n: int = 6) -> bytes:
    """Test images side by side with their true mask and the detector's heat map: inpainted
    ones (the smallest regions first, where localising matters most) and two real ones."""
    from deepfake.detector.bundle import heat_pixels
    from deepfake.detector.model import probability
    from deepfake.images import decode_png_array

    test = scored[scored["split"] == "test"]
    fakes = test[test["label"] == 1].sort_values(["coverage", "record_id"])
    if len(fakes) > n:  # spread over the range of areas
        fakes = fakes.iloc[np.linspace(0, len(fakes) - 1, n).round().astype(int)]
    picks = pd.concat([fakes, test[test["label"] == 0].head(2)])
    fig, axes = plt.subplots(len(picks) or 1, 3, figsize=(6.6, 2.2 * max(1, len(picks))),
                             squeeze=False)  # fmt: skip
    calibration = detector.meta["cell_calibration"]
    for row, (ax_image, ax_mask, ax_heat) in zip(picks.itertuples(), axes, strict=False):
        image = decode_png_array(storage.read_bytes(row.uri), row.uri)
        if row.mask_uri:
            mask = decode_png_array(storage.read_bytes(row.mask_uri), row.mask_uri)
        else:  # a real image, or a whole-image reconstruction
            mask = np.full(image.shape[:2], 255 * row.label, np.uint8)
        rows, cols = (int(v) for v in row.grid)
        cells = probability(np.asarray(row.heat, np.float32).reshape(rows, cols), calibration)
        said = "inpainted" if row.score >= float(detector.meta["threshold"]) else "real"
        truth = "real" if row.label == 0 else f"{row.variant}, {row.method}, {row.coverage:.0%}"
        ax_image.imshow(image)
        chance = float(detector.probabilities(np.array([row.score]))[0])
        ax_image.set_title(f"{truth}\n-> {said} ({chance:.2f})", fontsize=7)
        ax_mask.imshow(mask, cmap="gray", vmin=0, vmax=255)
        ax_mask.set_title("true mask", fontsize=7)
        ax_heat.imshow(heat_pixels(cells, image.shape[:2]), cmap="inferno", vmin=0, vmax=1)
        ax_heat.set_title("heat map (probability)", fontsize=7)
        for ax in (ax_image, ax_mask, ax_heat):
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
    by = "family" if metrics.get("leave_one_family_out") else "method"
    lomo = metrics.get(f"leave_one_{by}_out")
    if lomo:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = list(lomo)
        at = np.arange(len(names))
        for offset, key, label in ((-0.2, "roc_auc", "ROC-AUC"),
                                   (0.2, "balanced_accuracy", "balanced accuracy")):  # fmt: skip
            ax.barh(at + offset, [lomo[n][key] or 0 for n in names], height=0.4, label=label,
                    xerr=[lomo[n][f"{key}_std"] or 0 for n in names])  # fmt: skip
        ax.set(yticks=at, yticklabels=names, xlim=(0.4, 1.0),
               title=f"Each {by} left out of training (mean, std over splits)")  # fmt: skip
        ax.legend(loc="lower left", fontsize=7)
        out["held_out.png"] = _png(fig)
    return out
