"""The evaluation's human report (Markdown), and the same report made self-contained for a viewer
that cannot reach the storage (the Prefect UI)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from typing import Any

from PIL import Image

from deepfake.evaluate.names import COMPARED, LABELS, LEFT_OUT, METRICS, OVER_SPLITS


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _short(name: str) -> str:
    """A figure's label without its explanation in brackets: a table column's header."""
    return LABELS[name].split(" (")[0]


def _pm(summary: dict[str, Any], key: str) -> str:
    """mean ± std of a figure over splits."""
    if summary.get(key) is None:
        return "n/a"
    return f"{summary[key]:.4f} ± {summary[f'{key}_std']:.4f}"


def report_markdown(metrics: dict[str, Any], notes: dict[str, Any]) -> str:
    """A short human report; ``notes`` carries data, backend, backbone, skipped inputs."""
    lines = [
        "# Inpainting detector report",
        "",
        f"- Data: {notes['data']}; inpainting backend: **{notes['backend']}**; "
        f"features: {notes['backbone']}",
        f"- Held-out test split (grouped by source photo): {metrics['n_test_real']} real, "
        f"{metrics['n_test_inpainted']} inpainted images from {metrics['n_test_groups']} groups "
        f"({', '.join(metrics['test_groups'])}); training: {metrics['n_train']} images from "
        f"{metrics['n_train_groups']} groups.",
        f"- Detector: linear SVM on cell features (penalty {notes['best_params']['alpha']}); an "
        f"image's score is the mean of its top {notes['best_params']['top_k']} cells; positive "
        "class = inpainted.",
        *_features_lines(metrics),
        *(
            [f"- **{notes['backend_note']}**"]
            if "fell back" in notes.get("backend_note", "")
            else []
        ),  # fmt: skip
        "",
        *_headline(metrics),
        *_comparison_lines(metrics.get("comparison"), _fmt),
        *_held_out(metrics),
        *_groups(metrics),
        *_localisation(metrics.get("localisation")),
        *_robustness(metrics.get("robustness")),
        *_robustness_over_splits(metrics.get("robustness_over_splits")),
        *_robustness_by_fill(metrics.get("robustness_by_fill")),
        *_audit(metrics.get("shortcut_audit")),
        *_images(metrics),
        *_external(metrics.get("external")),
        *_skipped(notes.get("skipped", [])),
    ]
    return "\n".join(lines) + "\n"


def _headline(metrics: dict[str, Any]) -> list[str]:
    rows = [[label, _fmt(metrics[name])] for name, label in METRICS]
    rows.append(
        [
            "ROC-AUC on held-out folds of the training split (photos x families of fill)",
            f"{metrics['cv_roc_auc_mean']:.4f} ± {metrics['cv_roc_auc_std']:.4f}",
        ]
    )
    rates = ("eer", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "recall_at_5pct_fpr_small")
    rows += [[LABELS[key], _fmt(metrics.get(key))] for key in rates]
    if "roc_auc_ci95" in metrics:
        low, high = metrics["roc_auc_ci95"]
        rows.append(["ROC-AUC 95 % CI (bootstrap by source group)", f"{low:.4f} - {high:.4f}"])
    rows.append(
        [
            "threshold (chosen on held-out photos and families of fill of the training split)",
            _fmt(metrics["threshold"]),
        ]
    )
    if metrics.get("brier") is not None:
        rows.append(
            [
                f"Brier score of the probabilities (threshold = probability "
                f"{metrics['probability_threshold']:.3f})",
                _fmt(metrics["brier"]),
            ]
        )
    return _table(["metric", "value"], rows)


def _held_out(metrics: dict[str, Any]) -> list[str]:
    lines = []
    splits = metrics.get("repeated_splits")
    if splits and splits["splits"] > 1:
        lines += ["", f"## Over {splits['splits']} grouped splits (mean ± std)", ""]
        lines += _table(
            ["figure", "mean ± std", "per split"],
            [
                [k, _pm(splits, k), ", ".join(f"{v:.4f}" for v in splits[f"{k}_per_split"])]
                for k in OVER_SPLITS
            ],
        )
    for by in ("family", "method"):
        left = metrics.get(f"leave_one_{by}_out")
        if not left:
            continue
        title = f"Leave one {by} out (trained without it, tested on it; mean ± std over splits)"
        lines += ["", f"## {title}", ""]
        lines += _table(
            [f"left-out {by}", *(_short(k) for k in LEFT_OUT)],
            [[m, *(_pm(f, k) for k in LEFT_OUT)] for m, f in left.items()],
        )
        if by == "family" and metrics.get("weakest_family"):
            weakest = metrics["weakest_family"]
            lines += [
                "",
                f"Weakest family: **{weakest}** (ROC-AUC {_pm(left[weakest], 'roc_auc')} when "
                "the detector never saw it): expect fills of that kind, from tools this project "
                "never ran, to be caught least often.",
            ]
        if by == "family":
            lines += _left_out_by_fill(left)
    conditions = metrics.get("balanced_accuracy_at_threshold")
    if conditions:
        lines += [
            "",
            "Balanced accuracy at each held-out detector's own threshold: "
            + "; ".join(f"{name} {_fmt(v)}" for name, v in conditions.items())
            + ".",
        ]
    return lines


def _left_out_by_fill(families: dict[str, Any]) -> list[str]:
    rows = [[family, method, str(f["n_inpainted"]), _fmt(f["roc_auc"]), _fmt(f["roc_auc_without"])]
            for family, figures in families.items()
            for method, f in figures.get("by_fill", {}).items()]  # fmt: skip
    if not rows:
        return []
    return [
        "",
        "Each left-out family by the method that made the fill (whatever post-processing "
        "followed; mean over the splits): ROC-AUC of the real test images against its fills, and "
        "against the family's other fills without them:",
        "",
        *_table(
            ["left-out family", "fill method", "fills", "ROC-AUC", "the family without it"], rows
        ),  # fmt: skip
    ]


def _groups(metrics: dict[str, Any]) -> list[str]:
    lines = []
    for key, title in (
        ("per_mask_type", "mask type"),
        ("per_mask_area", "mask area"),
        ("per_family", "family of fill"),
        ("per_method", "inpainting method"),
    ):
        if not metrics.get(key):
            continue
        lines += ["", f"## Per {title} (test real images vs those inpaintings)", ""]
        lines += _table(
            [title, "ROC-AUC", "recall", "n inpainted"],
            [
                [name, _fmt(m["roc_auc"]), _fmt(m["recall"]), str(m["n_inpainted"])]
                for name, m in metrics[key].items()
            ],
        )
    return lines


def _localisation(loc: dict[str, Any] | None) -> list[str]:
    if not loc:
        return []
    lines = [
        "",
        "## Where the edit is (heat maps against the true masks)",
        "",
        f"Pixel ROC-AUC {_fmt(loc['pixel_roc_auc'])}, F1 {_fmt(loc['pixel_f1'])}, "
        f"mean IoU {_fmt(loc['iou'])} (heat map probability 0.5).",
        "",
    ]
    for key, title in (("per_mask_type", "mask type"), ("per_mask_area", "mask area")):
        lines += _table(
            [title, "pixel ROC-AUC", "F1", "IoU"],
            [
                [n, _fmt(m["pixel_roc_auc"]), _fmt(m["pixel_f1"]), _fmt(m["iou"])]
                for n, m in loc[key].items()
            ],
        ) + [""]
    return lines


def _robustness_over_splits(table: dict[str, Any] | None) -> list[str]:
    if not table:
        return []
    splits = len(next(iter(table.values()))["roc_auc_per_split"])
    rows = []
    for name, m in table.items():
        per = ", ".join(_fmt(v) for v in m["roc_auc_per_split"])
        rows.append([name, f"{_fmt(m['roc_auc'])} ({per})", _fmt(m["balanced_accuracy"]),
                     _fmt(min(m["specificity_per_split"]))])  # fmt: skip
    return [
        "",
        f"Over {splits} grouped splits (each split's own detector on its test images, degraded; "
        "the main split's are the rows above):",
        "",
        *_table(
            ["degradation", "ROC-AUC (per split)", "balanced accuracy", "lowest specificity"], rows
        ),  # fmt: skip
    ]


def _robustness_by_fill(table: dict[str, Any] | None) -> list[str]:
    if not table:
        return []
    conditions = [c for c in next(iter(table.values())) if c != "n_inpainted"]
    rows = [[method, str(entry["n_inpainted"]),
             *(_fmt(entry[c]["roc_auc"]) for c in conditions),
             *(_fmt(entry[c]["roc_auc_without"]) for c in conditions)]
            for method, entry in table.items()]  # fmt: skip
    return [
        "",
        "By the method that made the fill (whatever post-processing followed), over the same "
        "splits: ROC-AUC of the real test images against its fills, and against every other "
        "fill without them (which fills a degradation hides):",
        "",
        *_table(
            ["fill method", "fills", *conditions, *(f"without it, {c}" for c in conditions)], rows
        ),  # fmt: skip
    ]


def _robustness(table: dict[str, Any] | None) -> list[str]:
    if not table:
        return []
    return [
        "",
        "## Robustness (the test split degraded, real and inpainted alike)",
        "",
        *_table(
            ["degradation", "ROC-AUC", "balanced accuracy", "recall"],
            [
                [n, _fmt(m["roc_auc"]), _fmt(m["balanced_accuracy"]), _fmt(m["recall"])]
                for n, m in table.items()
            ],
        ),
    ]


def _audit(audit: dict[str, Any] | None) -> list[str]:
    if not audit:
        return []
    lines = [
        "",
        "## Shortcut audit",
        "",
        f"A logistic regression on metadata only ({', '.join(audit['features'])}), same "
        f"grouped protocol: ROC-AUC {audit['roc_auc']:.4f}.",
    ]
    if audit["warning"]:
        lines.append(
            "**Warning: far from 0.5.** Crude file statistics already separate the classes "
            "(inpainted regions are smoother, so their PNGs are smaller); compare the "
            "detector's figures with this one."
        )
    return lines


def _images(metrics: dict[str, Any]) -> list[str]:
    images = [
        "![ROC](roc.png)",
        "![PR](pr.png)",
        "![Confusion matrix](confusion_matrix.png)",
        "![Reliability](reliability.png)",
        "![Per mask type](per_mask.png)",
    ]
    if metrics.get("leave_one_family_out") or metrics.get("leave_one_method_out"):
        images.append("![Left out of training](held_out.png)")
    if metrics.get("robustness"):
        images.append("![Robustness](robustness.png)")
    return [
        "",
        " ".join(images),
        "",
        "Examples: each test image, its true mask and the detector's heat map.",
        "",
        "![Examples](examples.png)",
        "",
    ]


def _external(external: dict[str, Any] | None) -> list[str]:
    if not external:
        return []
    lines = ["## External test set", "", external["description"] + ".", ""]
    if external["n_external_inpainted"]:
        rows = [
            [k, _fmt(external[k])]
            for k in ("roc_auc", "average_precision", "accuracy", "balanced_accuracy", "recall")
        ]
        rows.append(
            [
                "n (real / external inpainted)",
                f"{external['n_test_real']} / {external['n_external_inpainted']}",
            ]
        )
        lines += [*_table(["metric", "value"], rows), ""]
    return lines


def _skipped(skipped: list[dict[str, str]]) -> list[str]:
    lines = ["## Skipped inputs", ""]
    if skipped:
        return lines + [
            f"- `{s.get('source_id') or s.get('record_id')}`: {s['reason']}" for s in skipped
        ]
    return lines + ["None: every input image was readable."]


def _features_lines(metrics: dict[str, Any]) -> list[str]:
    features, tune = metrics.get("features") or {}, metrics.get("finetune")
    if not features:
        return []
    size = features.get("input_size") or "native resolution"
    lines = [f"- Features: {features['backbone']} at {size}, cells of {features['cell']} px, "
             f"{features['cell_dim']} numbers per cell (every backbone stage's mean over the "
             "cell, and the copy and noise-residual statistics)."]  # fmt: skip
    if tune:
        losses = ", ".join(f"{v:.3f}" for v in tune["losses"])
        lines.append(
            f"- Backbone fine-tuned on the training split only ({tune.get('target', 'image')} "
            f"head): {tune['epochs']} epochs, "
            f"{tune['train_images']} images from {tune['train_groups']} groups, lr {tune['lr']}, "
            f"augmentation {tune['augmentation']}; loss per epoch {losses}. The held-out "
            "fold figures are optimistic for a fine-tuned backbone: it saw every training fold. "
            "So are the repeated splits after the first and every left-out family: the backbone "
            "was fine-tuned on the main split's training images, every family included, and "
            "those detectors test on some of them; the main split's test figures are the fair "
            "ones (`bench/finetune_protocols.py` fine-tunes once for every split and family)."
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
        image.save(buffer, format="PNG")  # optimize=True: 4x the time for 2.5 % less
        return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"

    return _IMAGE_LINK.sub(inline, report)
