"""Evaluation of the detector on the held-out split: metrics, plots and a short report.

Positive class = inpainted (label 1). Scores are SVM decision values; the threshold is the one
saved with the detector.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from deepfake.storage import Storage  # noqa: E402

log = logging.getLogger("deepfake")


def binary_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Threshold and ranking metrics; ranking ones are None when only one class is present."""
    predicted = (scores >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, scores)) if both else None,
        "average_precision": float(average_precision_score(y, scores)) if both else None,
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)) if both else None,
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "confusion_matrix": confusion_matrix(y, predicted, labels=[0, 1]).tolist(),
        "n_real": int((y == 0).sum()),
        "n_inpainted": int((y == 1).sum()),
    }


def evaluate(scored: pd.DataFrame, threshold: float, cv_scores: list[float]) -> dict[str, Any]:
    """metrics.json content (without config) from the per-record scores of the detector stage."""
    test = scored[scored["split"] == "test"]
    y, s = test["label"].to_numpy(), test["score"].to_numpy()
    overall = binary_metrics(y, s, threshold)
    real = test[test["label"] == 0]
    per_mask = {}
    for variant in sorted(test.loc[test["label"] == 1, "variant"].unique()):
        part = pd.concat([real, test[test["variant"] == variant]])
        per_mask[variant] = binary_metrics(
            part["label"].to_numpy(), part["score"].to_numpy(), threshold
        )
    metrics = {k: v for k, v in overall.items() if k not in ("n_real", "n_inpainted")}
    metrics.update(
        {
            "n_test_real": overall["n_real"],
            "n_test_inpainted": overall["n_inpainted"],
            "n_test_groups": int(test["group"].nunique()),
            "n_train": int((scored["split"] == "train").sum()),
            "n_train_groups": int(scored.loc[scored["split"] == "train", "group"].nunique()),
            "threshold": threshold,
            "cv_roc_auc_mean": float(np.mean(cv_scores)),
            "cv_roc_auc_std": float(np.std(cv_scores)),
            "cv_roc_auc_folds": [float(v) for v in cv_scores],
            "per_mask_type": per_mask,
            "test_groups": sorted(test["group"].unique().tolist()),
        }
    )
    return metrics


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def plots(scored: pd.DataFrame, threshold: float) -> dict[str, bytes]:
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


def report_markdown(metrics: dict[str, Any], notes: dict[str, Any]) -> str:
    """A short human report; ``notes`` carries data, backend, backbone, skipped inputs."""

    def fmt(value: Any) -> str:
        return (
            "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        )

    lines = [
        "# Inpainting detector report",
        "",
        f"- Data: {notes['data']}; inpainting backend: **{notes['backend']}**; "
        f"features: {notes['backbone']}",
        f"- Held-out test split (grouped by source photo): {metrics['n_test_real']} real, "
        f"{metrics['n_test_inpainted']} inpainted images from {metrics['n_test_groups']} groups "
        f"({', '.join(metrics['test_groups'])}); training: {metrics['n_train']} images from "
        f"{metrics['n_train_groups']} groups.",
        f"- Best SVM: `{notes['best_params']}`; positive class = inpainted.",
        *(
            [f"- **{notes['backend_note']}**"]
            if "fell back" in notes.get("backend_note", "")
            else []
        ),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "roc_auc",
        "average_precision",
        "accuracy",
        "balanced_accuracy",
        "precision",
        "recall",
        "f1",
    ):
        lines.append(f"| {key} | {fmt(metrics[key])} |")
    cv_mean, cv_std = metrics["cv_roc_auc_mean"], metrics["cv_roc_auc_std"]
    lines.append(f"| grouped CV ROC-AUC | {cv_mean:.4f} ± {cv_std:.4f} |")
    lines += [
        "",
        "## Per mask type (test real images vs that mask type)",
        "",
        "| mask type | ROC-AUC | recall | n inpainted |",
        "|---|---|---|---|",
    ]
    for variant, m in metrics["per_mask_type"].items():
        lines.append(
            f"| {variant} | {fmt(m['roc_auc'])} | {fmt(m['recall'])} | {m['n_inpainted']} |"
        )
    lines += ["", "![ROC](roc.png) ![PR](pr.png) ![Confusion matrix](confusion_matrix.png)", ""]
    external = metrics.get("external")
    if external:
        lines += ["## External test set", "", external["description"] + ".", ""]
        if external["n_external_inpainted"]:
            lines += ["| metric | value |", "|---|---|"]
            for key in ("roc_auc", "average_precision", "accuracy", "balanced_accuracy", "recall"):
                lines.append(f"| {key} | {fmt(external[key])} |")
            lines += [
                f"| n (real / external inpainted) | {external['n_test_real']} / "
                f"{external['n_external_inpainted']} |",
                "",
            ]
    skipped = notes.get("skipped", [])
    lines += ["## Skipped inputs", ""]
    if skipped:
        lines += [f"- `{s.get('source_id') or s.get('record_id')}`: {s['reason']}" for s in skipped]
    else:
        lines.append("None: every input image was readable.")
    return "\n".join(lines) + "\n"


def write_report(
    storage: Storage, folder: str, metrics: dict[str, Any], images: dict[str, bytes], report: str
) -> None:
    for name, data in images.items():
        storage.write_bytes(f"{folder}/{name}", data)
    storage.write_bytes(f"{folder}/report.md", report.encode())
    storage.write_json(f"{folder}/metrics.json", metrics)


STAGE = "evaluation"


def external_metrics(
    storage: Storage,
    settings: Any,
    external: pd.DataFrame,
    scored: pd.DataFrame,
    detector_folder: str,
    search: dict[str, Any],
) -> dict[str, Any]:
    """The detector on the dataset authors' own inpaintings of test-split sources.

    Real side: the same held-out real images as the main test. Inpainted side: the external
    images whose source is in the test split, so no training image is seen again.
    """
    from deepfake.classify import load_model
    from deepfake.features import FeatureExtractor
    from deepfake.images import decode_png_array
    from deepfake.stages import chunks

    test = scored[scored["split"] == "test"]
    chosen = external[external["group"].isin(set(test["group"]))]
    description = "DeepfakeArt authors' inpainting.png of held-out sources vs held-out real images"
    if chosen.empty:
        return {"n_external_inpainted": 0, "description": description + " (none in the test split)"}
    extractor = FeatureExtractor(
        settings.features.backbone, settings.features.input_size, settings.features.device
    )
    vectors = [
        extractor.transform([decode_png_array(storage.read_bytes(u), u) for u in batch])
        for batch in chunks(list(chosen["uri"]), settings.features.batch_size)
    ]
    model = load_model(storage, detector_folder, search["model_sha256"])
    external_scores = model.decision_function(np.concatenate(vectors))
    reals = test[test["label"] == 0]
    y = np.concatenate([np.zeros(len(reals), int), np.ones(len(chosen), int)])
    s = np.concatenate([reals["score"].to_numpy(), external_scores])
    result = binary_metrics(y, s, float(search["threshold"]))
    result["n_external_inpainted"] = result.pop("n_inpainted")
    result["n_test_real"] = result.pop("n_real")
    result["description"] = description
    return result


def run_evaluation(
    storage: Storage, settings: Any, sources: Any, dataset: Any, features: Any, detector: Any
) -> Any:
    """Metrics, plots and report of a trained detector, in a deterministic folder."""
    from deepfake.data import external_records, skipped_sources
    from deepfake.inpaint import backend_note
    from deepfake.stages import finished, stage_folder, write_manifest

    folder = stage_folder(STAGE, settings.digest(), sources, dataset, features, detector)
    done = finished(storage, STAGE, folder)
    if done and storage.exists(f"{folder}/metrics.json"):
        log.info("evaluation: reusing %s", storage.uri(folder))
        return done
    scored = storage.read_parquet(detector.manifest)
    search = storage.read_json(f"{detector.folder}/search.json")
    metrics = evaluate(scored, float(search["threshold"]), search["cv_roc_auc"])
    metrics["best_params"] = search["best_params"]
    metrics["config"] = settings.public_dict()
    backends = sorted(b for b in scored["backend"].unique() if b)
    metrics["inpaint_backend"] = ", ".join(backends)
    metrics["inpaint_backend_note"] = backend_note(storage, dataset).get("note", "")
    skipped = skipped_sources(storage, sources)
    skipped_features = f"{features.folder}/skipped.json"
    if storage.exists(skipped_features):
        skipped += storage.read_json(skipped_features)
    metrics["skipped_inputs"] = skipped
    external = external_records(storage, sources)
    if external is not None:
        metrics["external"] = external_metrics(
            storage, settings, external, scored, detector.folder, search
        )
    notes = {
        "data": f"{settings.data.source}, {scored['source_id'].nunique()} sources, "
        f"{len(scored)} images",
        "backend": metrics["inpaint_backend"],
        "backend_note": metrics["inpaint_backend_note"],
        "backbone": settings.features.backbone,
        "best_params": search["best_params"],
        "skipped": skipped,
    }
    write_report(
        storage,
        folder,
        metrics,
        plots(scored, metrics["threshold"]),
        report_markdown(metrics, notes),
    )
    log.info(
        "evaluation: held-out ROC-AUC %.4f, accuracy %.4f (%d real, %d inpainted test images)",
        metrics["roc_auc"],
        metrics["accuracy"],
        metrics["n_test_real"],
        metrics["n_test_inpainted"],
    )
    test = scored[scored["split"] == "test"].reset_index(drop=True)
    return write_manifest(storage, STAGE, folder, test)
