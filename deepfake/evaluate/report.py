"""The evaluation's human report (Markdown), and the same report made self-contained for a viewer
that cannot reach the storage (the Prefect UI)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from typing import Any

from PIL import Image

from deepfake.evaluate.metrics import COMPARED, HEADLINE_METRICS
from deepfake.storage import Storage


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
