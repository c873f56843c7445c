"""The detector's ablation: which change moves the figures that predict transfer.

Every variant is the offline default with some settings changed (``--set``-style overrides); the
variants share the storage, so the stages they have in common (sources, masks, inpainting, split,
and features where only the detector differs) are made once. For each variant (mean over the
repeated grouped splits unless said):

- leave one family out: ROC-AUC and balanced accuracy of each family left out, and the weakest
  (and, JSON only, each left-out family's ROC-AUC by fill method);
- repeated splits: ROC-AUC, balanced accuracy, the lowest specificity of any split, recall of
  small edits (< 10 %) at 5 % false positives; and the main split's own ROC-AUC and balanced
  accuracy (the only fair ones for a backbone fine-tuned on its training images);
- robustness: ROC-AUC and balanced accuracy after JPEG 80 and downscaling by 0.5, against
  clean: the main split's, and the mean over the splits (each split's own detector on its own
  test images: what the targets name);
- robustness by fill method (JSON only): each fill method's ROC-AUC against the real test images,
  clean and degraded, and every other fill's without it, over the splits;
- pixel ROC-AUC (main split) and the variant's own time.

Prints a table and writes bench/results/ablation.json.

    python bench/ablation.py [--storage bench/.data/ablation] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from results_file import RESULTS, save

from deepfake.config import load_settings
from deepfake.detector.settings import HeldOut
from deepfake.detector.stage import train_detector
from deepfake.evaluate.outputs import evaluation_metrics
from deepfake.evaluate.stage import evaluate_detector
from deepfake.features.stage import extract_features
from deepfake.inpaint.stage import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.sources.stage import prepare_sources
from deepfake.split.stage import split_dataset
from deepfake.storage import Storage

# (name, what changes, overrides): each row is the one before it plus one change, except where
# the row says "instead".
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("plain", "no degraded training copies", ["features.augment=0"]),
    ("default", "a share 0.5 of training images degraded (the default)", []),
    ("augment-all", "instead: every training image degraded", ["features.augment=1"]),
    ("no-copy-rule", "default without the copy rule's verdicts", ["svm.copy_rule=false"]),
    (
        "relative-3",
        "default + the first 3 stages' cell features against the image's median",
        ["features.relative_stages=3"],
    ),
    (
        "relative-5",
        "instead: every stage's cell features against the image's median",
        ["features.relative_stages=5"],
    ),
    (
        "augment-all-relative-3",
        "instead: every training image degraded and the first 3 stages against the median",
        ["features.augment=1", "features.relative_stages=3"],
    ),
    ("svm-15-epochs", "default with 15 passes of SGD instead of 8", ["svm.epochs=15"]),
    (
        "finetune-2",
        "default + the backbone fine-tuned 2 epochs on the main split's training images (JPEG, "
        "blur, flips); its other splits and left-out families are optimistic: that backbone saw "
        "some of their test images and every family",
        ["features.finetune_epochs=2"],
    ),
    (
        "near-copies",
        "instead: default + each cell's share of near-copy windows (patches copied and then "
        "compressed or resized: deepfake/features/near_copies.py), which the copy rule also "
        "counts",
        ["features.near_copies=true"],
    ),
]


def run_variant(root: str, overrides: list[str]) -> dict[str, Any]:
    settings = load_settings(overrides=overrides, storage=root)
    storage = Storage.open(settings.storage)
    start = time.monotonic()
    sources = prepare_sources(storage, settings.data)
    masks = make_masks(storage, settings.masks, sources)
    dataset = run_inpaint(storage, settings.inpaint, sources, masks)
    split = split_dataset(storage, settings.split, dataset)
    features = extract_features(storage, settings.features, split)
    detector = train_detector(storage, settings.svm, features, HeldOut.of(settings))
    evaluation = evaluate_detector(storage, settings, sources, dataset, features, detector)
    metrics = evaluation_metrics(storage, evaluation)
    return {"seconds": round(time.monotonic() - start, 1), **figures(metrics)}


def figures(metrics: dict[str, Any]) -> dict[str, Any]:
    splits = metrics["repeated_splits"]
    families = metrics.get("leave_one_family_out", {})
    robust = metrics.get("robustness", {})
    out: dict[str, Any] = {
        "roc_auc": splits["roc_auc"],
        "balanced_accuracy": splits["balanced_accuracy"],
        # The main split's own: the one figure a backbone fine-tuned on its training images
        # cannot have seen.
        "main_split": {k: splits[f"{k}_per_split"][0] for k in ("roc_auc", "balanced_accuracy")},
        "min_specificity": min(splits["specificity_per_split"]),
        "small_tpr_at_5pct_fpr": splits["recall_at_5pct_fpr_small"],
        "pixel_roc_auc": metrics["localisation"]["pixel_roc_auc"],
        "weakest_family": metrics.get("weakest_family"),
        "families": {
            f: {
                "roc_auc": v["roc_auc"],
                "balanced_accuracy": v["balanced_accuracy"],
                "by_fill": {m: x["roc_auc"] for m, x in v.get("by_fill", {}).items()},
            }
            for f, v in families.items()
        },
    }
    for name in ("none", "jpeg_80", "downscale_0.5"):
        if name in robust:
            out[f"robust_{name}"] = {k: robust[name][k] for k in ("roc_auc", "balanced_accuracy")}
    # Each split's own detector on its degraded test images: what the targets are means of.
    for name, figures in metrics.get("robustness_over_splits", {}).items():
        out[f"robust_splits_{name}"] = {k: figures[k] for k in ("roc_auc", "balanced_accuracy")}
    # The same split by the method that made the fill: which fills a degradation hides.
    out["robust_by_fill"] = {
        method: {c: {k: f[k] for k in ("roc_auc", "roc_auc_without")}
                 for c, f in entry.items() if c != "n_inpainted"}
        for method, entry in metrics.get("robustness_by_fill", {}).items()
    }  # fmt: skip
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    families = sorted({f for r in rows.values() for f in r["families"]})
    head = ["variant", *(f"LOFO {f} AUC/BA" for f in families), "clean AUC/BA",
            "main split AUC/BA", "JPEG80 AUC/BA", "down0.5 AUC/BA", "JPEG80 over splits",
            "down0.5 over splits", "min spec", "small TPR@5%",
            "pixel AUC", "s"]  # fmt: skip

    def pair(d: dict[str, Any] | None) -> str:
        return f"{d['roc_auc']:.3f}/{d['balanced_accuracy']:.3f}" if d else "n/a"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, *(pair(r["families"].get(f)) for f in families),
                 pair({"roc_auc": r["roc_auc"], "balanced_accuracy": r["balanced_accuracy"]}),
                 pair(r.get("main_split")), pair(r.get("robust_jpeg_80")),
                 pair(r.get("robust_downscale_0.5")), pair(r.get("robust_splits_jpeg_80")),
                 pair(r.get("robust_splits_downscale_0.5")), f"{r['min_specificity']:.3f}",
                 f"{r['small_tpr_at_5pct_fpr']:.3f}", f"{r['pixel_roc_auc']:.3f}",
                 f"{r['seconds']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="bench/.data/ablation")
    parser.add_argument("--only", nargs="*", help="run only these variants")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = {}
    for name, change, overrides in VARIANTS:
        if args.only and name not in args.only:
            continue
        print(f"{name}: {change} ({' '.join(overrides) or 'the default'})", flush=True)
        rows[name] = {"change": change, "overrides": overrides,
                      **run_variant(args.storage, overrides)}  # fmt: skip
        print(table({name: rows[name]}), flush=True)
    # Variants run before (``--only`` reruns some) are kept, in the order of VARIANTS.
    kept = RESULTS / "ablation.json"
    earlier = json.loads(kept.read_text())["variants"] if kept.exists() else {}
    merged = {n: {**earlier, **rows}[n] for n, _, _ in VARIANTS if n in {**earlier, **rows}}
    print(table(merged))
    save("ablation", {"variants": merged, "table": table(merged)})


if __name__ == "__main__":
    main()
