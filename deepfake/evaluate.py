"""Evaluation of the detector on the held-out split: metrics, plots and a short report.

Positive class = inpainted (label 1). Scores are SVM decision values; the threshold is the one
saved with the detector.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
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

from deepfake.predict import Detector  # noqa: E402
from deepfake.storage import Storage  # noqa: E402

log = logging.getLogger("deepfake")


def _rates(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Equal error rate and the true positive rate at 1 % and 5 % false positives."""
    fpr, tpr, _ = roc_curve(y, scores)
    fnr = 1 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return {
        "eer": float((fpr[i] + fnr[i]) / 2),
        "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
        "tpr_at_5pct_fpr": float(np.interp(0.05, fpr, tpr)),
    }


def binary_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Threshold and ranking metrics; ranking ones are None when only one class is present."""
    predicted = (scores >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    rates = _rates(y, scores) if both else dict.fromkeys(_RATE_KEYS)
    return {
        **rates,
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


_RATE_KEYS = ("eer", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr")
HEADLINE_METRICS = (
    "roc_auc",
    "average_precision",
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "f1",
)
AREA_BUCKETS = ((0.0, 0.45), (0.45, 0.5), (0.5, 0.55), (0.55, 1.01))


def bootstrap_ci(test: pd.DataFrame, resamples: int, seed: int) -> dict[str, list[float]]:
    """95 % intervals of ROC-AUC and average precision, resampling whole source groups."""
    if resamples == 0:
        return {}
    groups = test["group"].to_numpy()
    names = np.unique(groups)
    index = {g: np.flatnonzero(groups == g) for g in names}
    y, s = test["label"].to_numpy(), test["score"].to_numpy()
    rng = np.random.default_rng(seed)
    aucs, aps = [], []
    for _ in range(resamples):
        rows = np.concatenate([index[g] for g in rng.choice(names, size=len(names))])
        if len(np.unique(y[rows])) == 2:
            aucs.append(roc_auc_score(y[rows], s[rows]))
            aps.append(average_precision_score(y[rows], s[rows]))
    if not aucs:
        return {}
    return {
        "roc_auc_ci95": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))],
        "average_precision_ci95": [float(np.percentile(aps, 2.5)), float(np.percentile(aps, 97.5))],
        "bootstrap_resamples": len(aucs),
    }


def per_area_bucket(test: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Test real images against the inpaintings whose mask covers a given share of the image."""
    real = test[test["label"] == 0]
    out = {}
    for low, high in AREA_BUCKETS:
        fakes = test[(test["label"] == 1) & (test["coverage"] >= low) & (test["coverage"] < high)]
        if len(fakes):
            part = pd.concat([real, fakes])
            out[f"{low:.2f}-{min(high, 1.0):.2f}"] = binary_metrics(
                part["label"].to_numpy(), part["score"].to_numpy(), threshold
            )
    return out


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
            "per_mask_area": per_area_bucket(test, threshold) if "coverage" in test else {},
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


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


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
        *_features_lines(metrics),
        *(
            [f"- **{notes['backend_note']}**"]
            if "fell back" in notes.get("backend_note", "")
            else []
        ),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in HEADLINE_METRICS:
        lines.append(f"| {key} | {fmt(metrics[key])} |")
    cv_mean, cv_std = metrics["cv_roc_auc_mean"], metrics["cv_roc_auc_std"]
    lines.append(f"| grouped CV ROC-AUC | {cv_mean:.4f} ± {cv_std:.4f} |")
    for key in ("eer", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr"):
        lines.append(f"| {key} | {fmt(metrics.get(key))} |")
    if "roc_auc_ci95" in metrics:
        low, high = metrics["roc_auc_ci95"]
        lines.append(f"| ROC-AUC 95 % CI (bootstrap by source group) | {low:.4f} - {high:.4f} |")
    lines.append(
        f"| threshold (chosen on out-of-fold training scores) | {fmt(metrics['threshold'])} |"
    )
    if metrics.get("brier") is not None:
        lines.append(
            f"| Brier score of the probabilities (Platt scaling on out-of-fold training scores; "
            f"threshold = probability {metrics['probability_threshold']:.3f}) | "
            f"{fmt(metrics['brier'])} |"
        )
    lines += _comparison_lines(metrics.get("comparison"), fmt)
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
    if metrics.get("per_mask_area"):
        lines += ["", "## Per mask area (share of the image inpainted)", ""]
        lines += _table(
            ["mask area", "ROC-AUC", "recall", "n inpainted"],
            [[b, fmt(m["roc_auc"]), fmt(m["recall"]), str(m["n_inpainted"])]
             for b, m in metrics["per_mask_area"].items()],
        )  # fmt: skip
    if metrics.get("robustness"):
        lines += ["", "## Robustness (the test split degraded, real and inpainted alike)", ""]
        lines += _table(
            ["degradation", "ROC-AUC", "balanced accuracy", "recall"],
            [[n, fmt(m["roc_auc"]), fmt(m["balanced_accuracy"]), fmt(m["recall"])]
             for n, m in metrics["robustness"].items()],
        )  # fmt: skip
    audit = metrics.get("shortcut_audit")
    if audit:
        lines += ["", "## Shortcut audit", "",
                  f"A logistic regression on metadata only ({', '.join(audit['features'])}), same "
                  f"grouped protocol: ROC-AUC {audit['roc_auc']:.4f}."]  # fmt: skip
        if audit["warning"]:
            lines.append(
                "**Warning: far from 0.5.** Crude file statistics already separate the classes "
                "(inpainted regions are smoother, so their PNGs are smaller); compare the "
                "detector's figures with this one."
            )
    images = ["![ROC](roc.png)", "![PR](pr.png)", "![Confusion matrix](confusion_matrix.png)",
              "![Per mask type](per_mask.png)", "![Examples](examples.png)"]  # fmt: skip
    if metrics.get("robustness"):
        images.append("![Robustness](robustness.png)")
    lines += ["", " ".join(images), ""]
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


def _features_lines(metrics: dict[str, Any]) -> list[str]:
    features, tune = metrics.get("features") or {}, metrics.get("finetune")
    if not features:
        return []
    size = features.get("input_size") or "native resolution"
    crop = features.get("crop_size")
    crops = f", crops of {crop} px (mean and max)" if crop else ""
    lines = [f"- Features: {features['backbone']}, {features['pooling']} pooling, {size}{crops}, "
             f"{features['dim']} dimensions."]  # fmt: skip
    if tune:
        losses = ", ".join(f"{v:.3f}" for v in tune["losses"])
        lines.append(
            f"- Backbone fine-tuned on the training split only: {tune['epochs']} epochs, "
            f"{tune['train_images']} images from {tune['train_groups']} groups, lr {tune['lr']}, "
            f"augmentation {tune['augmentation']}; loss per epoch {losses}. The grouped CV "
            "figure is optimistic for a fine-tuned backbone: it saw every training fold."
        )
    return lines


def _comparison_lines(comparison: dict[str, Any] | None, fmt: Callable[[Any], str]) -> list[str]:
    if not comparison:
        return []
    tuned, frozen = comparison["fine_tuned"], comparison["frozen"]
    rows = [[k, fmt(frozen[k]), fmt(tuned[k])] for k in COMPARED]
    for name, value in tuned["robustness_roc_auc"].items():
        if name != "none":
            rows.append([f"ROC-AUC after {name}", fmt(frozen["robustness_roc_auc"].get(name)),
                         fmt(value)])  # fmt: skip
    return [
        "",
        "## Frozen vs fine-tuned backbone (same split, same SVM search)",
        "",
        *_table(["metric", "frozen ImageNet backbone", "fine-tuned backbone"], rows),
    ]


_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def embed_images(report: str, images: dict[str, bytes], max_width: int = 720) -> str:
    """The report with every linked PNG (``![alt](name.png)``) put inside it as a data URI,
    shrunk to at most ``max_width`` pixels wide: one self-contained document for a viewer that
    cannot reach the storage (the Prefect UI). Links to images not in ``images`` stay as they
    are."""

    def inline(match: re.Match[str]) -> str:
        alt, name = match.groups()
        if name not in images:
            return match.group(0)
        image = Image.open(io.BytesIO(images[name]))
        if image.width > max_width:
            height = round(image.height * max_width / image.width)
            image = image.resize((max_width, height), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"

    return _IMAGE_LINK.sub(inline, report)


def write_report(
    storage: Storage, folder: str, metrics: dict[str, Any], images: dict[str, bytes], report: str
) -> None:
    for name, data in images.items():
        storage.write_bytes(f"{folder}/{name}", data)
    storage.write_bytes(f"{folder}/report.md", report.encode())
    storage.write_json(f"{folder}/metrics.json", metrics)


STAGE = "evaluation"


def robustness(
    storage: Storage, detector: Detector, test: pd.DataFrame, threshold: float, which: str = ""
) -> dict[str, Any]:
    """The held-out split again after each degradation, applied to real and inpainted alike."""
    from deepfake.perturb import PERTURBATIONS
    from deepfake.stages import Progress

    y, uris = test["label"].to_numpy(), list(test["uri"])
    table = {"none": binary_metrics(y, test["score"].to_numpy(), threshold)}
    progress = Progress(f"robustness {which}".strip(), len(PERTURBATIONS), "degradations",
                        log=False)  # fmt: skip
    for name, transform in PERTURBATIONS.items():
        table[name] = binary_metrics(y, detector.score_uris(storage, uris, transform), threshold)
        log.info("robustness: %s -> ROC-AUC %.4f", name, table[name]["roc_auc"] or float("nan"))
        progress.advance()
    return table


def shortcut_audit(storage: Storage, scored: pd.DataFrame, folds: int, seed: int) -> dict[str, Any]:
    """A trivial classifier on metadata only (file size, width, height, format, mean intensity),
    with the same grouped protocol. Far from 0.5 means the classes differ in something other than
    content, or that the inpainting is visible in the crudest statistics."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    formats = {"PNG": 0, "JPEG": 1, "WEBP": 2, "BMP": 3, "TIFF": 4}
    rows = []
    for data in storage.read_many(list(scored["uri"])):
        image = Image.open(io.BytesIO(data))
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        code = formats.get(image.format or "", len(formats))
        rows.append([len(data), image.width, image.height, code, pixels.mean()])
    X, y, groups = np.asarray(rows), scored["label"].to_numpy(), scored["group"].to_numpy()
    folds = min(folds, len(np.unique(groups)))
    cv = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
    scores = cross_val_predict(model, X, y, groups=groups, cv=cv, method="decision_function")
    auc = float(roc_auc_score(y, scores))
    result = {
        "features": ["file_size", "width", "height", "format", "mean_intensity"],
        "roc_auc": auc,
        "warning": abs(auc - 0.5) > 0.1,
    }
    if result["warning"]:
        log.warning(
            "shortcut audit: metadata alone reaches ROC-AUC %.3f (far from 0.5): the detector's "
            "figures may owe something to file statistics rather than content", auc,
        )  # fmt: skip
    return result


def external_metrics(
    storage: Storage, detector: Detector, external: pd.DataFrame, test: pd.DataFrame
) -> dict[str, Any]:
    """The detector on the dataset authors' own inpaintings of test-split sources.

    Real side: the same held-out real images as the main test. Inpainted side: the external
    images whose source is in the test split, so no training image is seen again.
    """
    chosen = external[external["group"].isin(set(test["group"]))]
    description = "DeepfakeArt authors' inpainting.png of held-out sources vs held-out real images"
    if chosen.empty:
        return {"n_external_inpainted": 0, "description": description + " (none in the test split)"}
    external_scores = detector.score_uris(storage, list(chosen["uri"]))
    reals = test[test["label"] == 0]
    y = np.concatenate([np.zeros(len(reals), int), np.ones(len(chosen), int)])
    s = np.concatenate([reals["score"].to_numpy(), external_scores])
    result = binary_metrics(y, s, float(detector.meta["threshold"]))
    result["n_external_inpainted"] = result.pop("n_inpainted")
    result["n_test_real"] = result.pop("n_real")
    result["description"] = description
    return result


def detector_metrics(
    storage: Storage, settings: Any, detector_stage: Any, which: str = ""
) -> tuple[dict[str, Any], pd.DataFrame, Detector]:
    """Held-out metrics of one trained detector stage: headline, CIs, per mask, calibration and
    (when enabled) robustness. Returns the metrics, the scored records and the loaded detector."""
    scored = storage.read_parquet(detector_stage.manifest)
    search = storage.read_json(f"{detector_stage.folder}/search.json")
    detector = Detector.load(storage, detector_stage.folder, settings.features.device)
    threshold = float(search["threshold"])
    metrics = evaluate(scored, threshold, search["cv_roc_auc"])
    test = scored[scored["split"] == "test"]
    metrics.update(bootstrap_ci(test, settings.evaluate.bootstrap, settings.evaluate.seed))
    probabilities = detector.probabilities(test["score"].to_numpy())
    metrics["brier"] = float(np.mean((probabilities - test["label"].to_numpy()) ** 2))
    metrics["probability_threshold"] = detector.meta["probability_threshold"]
    metrics["best_params"] = search["best_params"]
    metrics["features"] = {
        k: detector.meta.get(k) for k in ("backbone", "pooling", "input_size", "crop_size", "dim")
    }
    metrics["finetune"] = detector.meta.get("finetune")
    if settings.evaluate.robustness:
        metrics["robustness"] = robustness(storage, detector, test, threshold, which)
    return metrics, scored, detector


COMPARED = ("roc_auc", "average_precision", "balanced_accuracy", "eer", "tpr_at_5pct_fpr",
            "brier", "cv_roc_auc_mean")  # fmt: skip


def comparison(fine_tuned: dict[str, Any], frozen: dict[str, Any]) -> dict[str, Any]:
    """The figures that tell a fine-tuned backbone from the frozen one, side by side."""

    def pick(m: dict[str, Any]) -> dict[str, Any]:
        out = {k: m.get(k) for k in COMPARED}
        out["roc_auc_ci95"] = m.get("roc_auc_ci95")
        out["robustness_roc_auc"] = {k: v["roc_auc"] for k, v in m.get("robustness", {}).items()}
        return out

    return {"fine_tuned": pick(fine_tuned), "frozen": pick(frozen)}


def run_evaluation(
    storage: Storage,
    settings: Any,
    sources: Any,
    dataset: Any,
    features: Any,
    detector: Any,
    baseline: Any = None,
) -> Any:
    """Metrics, plots and report of a trained detector, in a deterministic folder. ``baseline``
    (a detector on frozen features) adds the frozen vs fine-tuned comparison."""
    from deepfake.data import external_records, skipped_sources
    from deepfake.inpaint import backend_note
    from deepfake.stages import finished, stage_folder, write_manifest

    inputs = [sources, dataset, features, detector] + ([baseline] if baseline else [])
    folder = stage_folder(STAGE, settings.digest(), *inputs)
    done = finished(storage, STAGE, folder)
    if done:
        log.info("evaluation: reusing %s", storage.uri(folder))
        return done
    metrics, scored, model = detector_metrics(storage, settings, detector)
    if baseline is not None:
        frozen, _, _ = detector_metrics(storage, settings, baseline, "frozen backbone")
        metrics["comparison"] = comparison(metrics, frozen)
    test = scored[scored["split"] == "test"]
    if settings.evaluate.shortcut_audit:
        metrics["shortcut_audit"] = shortcut_audit(
            storage, scored, settings.svm.cv_folds, settings.svm.seed
        )
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
        metrics["external"] = external_metrics(storage, model, external, test)
    notes = {
        "data": f"{settings.data.source}, {scored['source_id'].nunique()} sources, "
        f"{len(scored)} images",
        "backend": metrics["inpaint_backend"],
        "backend_note": metrics["inpaint_backend_note"],
        "backbone": settings.features.backbone,
        "best_params": metrics["best_params"],
        "skipped": skipped,
    }
    images = plots(scored, metrics["threshold"]) | summary_plots(metrics)
    images["examples.png"] = example_grid(storage, scored, metrics["threshold"])
    write_report(storage, folder, metrics, images, report_markdown(metrics, notes))
    log.info(
        "evaluation: held-out ROC-AUC %.4f, accuracy %.4f (%d real, %d inpainted test images)",
        metrics["roc_auc"],
        metrics["accuracy"],
        metrics["n_test_real"],
        metrics["n_test_inpainted"],
    )
    files = ["metrics.json", "report.md", *images]
    return write_manifest(storage, STAGE, folder, test.reset_index(drop=True), files=files)
