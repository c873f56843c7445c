"""A fine-tuned backbone measured fairly: one fine-tuning for every protocol.

The ablation's fine-tuned row is optimistic: its backbone is fine-tuned once, on the main split's
training images of every family, and then the other splits and every left-out family are tested
on images or a family it was tuned on. Here every protocol gets its own backbone. For each split
seed and each family of fill left out (or none), that family's training images are dropped from
the split, the backbone is fine-tuned on what is left, the features are extracted and the detector
is trained exactly as the default's; the protocol's figures are then read:

- nothing left out: that split's main detector (the repeated-split figures), and the same test
  images after JPEG 80 and after downscaling by 0.5 (the evaluation's robustness table);
- family f left out: that run's detector "without family f", tested on the split's real test
  images against f's (the leave-one-family-out figures).

The same runs with the frozen backbone give the baseline through the same path (its penalty is
searched on the same reduced training data, so it can differ slightly from the evaluation's
leave-one-family-out figures, which share the main split's penalty). Figures are means over the
splits, each at the protocol's own threshold, as in the evaluation.

    python bench/finetune_protocols.py [--epochs 2] [--splits 3] [--set features.x=y ...]
        [--only frozen|finetuned] [--storage bench/.data/ablation]

Prints a table and writes bench/results/finetune_protocols.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np
from results_file import RESULTS, save

from deepfake.config import Settings, load_settings
from deepfake.detector.bundle import Detector
from deepfake.detector.settings import HeldOut
from deepfake.detector.stage import protocol_results, search_results, train_detector
from deepfake.evaluate.checks import robustness
from deepfake.evaluate.protocol_figures import protocol_figures
from deepfake.features.stage import extract_features
from deepfake.hashing import digest_of
from deepfake.inpaint.stage import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.sources.stage import prepare_sources
from deepfake.split.stage import split_dataset
from deepfake.stages import StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

FIGURES = ("roc_auc", "balanced_accuracy", "specificity", "recall", "recall_at_5pct_fpr_small")
DEGRADED = ("jpeg_80", "downscale_0.5")


def without_family(storage: Storage, split: StageOutput, family: str | None) -> StageOutput:
    """The split with ``family``'s training images dropped (its test images kept)."""
    if family is None:
        return split

    def work(folder: str) -> tuple[Any, list[str]]:
        frame = storage.read_parquet(split.manifest)
        dropped = (frame["split"] == "train") & (frame["label"] == 1) & (frame["family"] == family)
        return frame[~dropped].reset_index(drop=True), []

    folder = stage_folder("split", digest_of({"without_family": family}), split)
    return run_stage(storage, "split", folder, work)


def families(storage: Storage, split: StageOutput) -> list[str]:
    frame = storage.read_parquet(split.manifest)
    return sorted(frame.loc[frame["label"] == 1, "family"].unique())


def protocol(
    storage: Storage, settings: Settings, split: StageOutput, family: str | None
) -> dict[str, Any]:
    """The figures of one protocol (``split``, ``family`` left out or none), with the backbone
    fine-tuned (or not) on that protocol's training images only."""
    start = time.monotonic()
    features = extract_features(storage, settings.features, without_family(storage, split, family))
    held = HeldOut(test_size=settings.split.test_size, seed=settings.split.seed,
                   leave_one_family_out=family is not None)  # fmt: skip
    detector = train_detector(storage, settings.svm, features, held)
    scored = storage.read_parquet(detector.manifest)
    degraded = {}
    if family is None:
        test = scored[scored["split"] == "test"]
        ids, scores = list(test["record_id"]), list(test["score"])
        threshold = float(search_results(storage, detector)["threshold"])
        bundle = Detector.load(storage, detector.folder, settings.features.device)
        table = robustness(storage, bundle, test, threshold)
        degraded = {
            f"{n} {k}": table[n][k] for n in DEGRADED for k in ("roc_auc", "balanced_accuracy")
        }
    else:
        (result,) = [p for p in protocol_results(storage, detector) if p["left_out"] == family]
        ids, scores = result["test_record_ids"], result["test_scores"]
        threshold = result["threshold"]
    figures = protocol_figures(scored, ids, scores, threshold)
    return {**{k: figures[k] for k in FIGURES}, **degraded,
            "seconds": round(time.monotonic() - start, 1)}  # fmt: skip


def run(root: str, epochs: int, splits: int, overrides: list[str]) -> dict[str, Any]:
    """Every protocol's figures for a backbone fine-tuned ``epochs`` (0: frozen)."""
    out: dict[str, Any] = {}
    for seed in range(splits):
        settings = load_settings(
            overrides=[*overrides, f"split.seed={seed}", f"features.finetune_epochs={epochs}"],
            storage=root,
        )
        storage = Storage.open(settings.storage)
        sources = prepare_sources(storage, settings.data)
        masks = make_masks(storage, settings.masks, sources)
        dataset = run_inpaint(storage, settings.inpaint, sources, masks)
        split = split_dataset(storage, settings.split, dataset)
        for family in [None, *families(storage, split)]:
            name = family or "split"
            figures = protocol(storage, settings, split, family)
            out.setdefault(name, []).append(figures)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if v is not None)
            print(f"  epochs {epochs}, split seed {seed}, {name}: {shown}", flush=True)
    return {name: summary(rows) for name, rows in out.items()}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each figure over the splits, and the values per split."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_per_split"] = values
    return out


def pair(figures: dict[str, Any], prefix: str = "") -> str:
    auc, ba = (figures.get(f"{prefix}{k}") for k in ("roc_auc", "balanced_accuracy"))
    return "n/a" if auc is None else f"{auc:.3f}/{ba:.3f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    names = sorted({n for r in results.values() for n in r} - {"split"})
    head = ["backbone", *(f"LOFO {n} AUC/BA" for n in names), "splits AUC/BA",
            *(f"{n} AUC/BA" for n in DEGRADED), "min specificity", "small TPR@5%", "s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in results.items():
        s = r["split"]
        seconds = sum(sum(v["seconds_per_split"]) for v in r.values())
        cells = [label,
                 *(pair(r[n]) for n in names), pair(s),
                 *(pair(s, f"{n} ") for n in DEGRADED),
                 f"{min(s['specificity_per_split']):.3f}", f"{s['recall_at_5pct_fpr_small']:.3f}",
                 f"{seconds:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="bench/.data/ablation")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--splits", type=int, default=3, help="grouped splits (seeds 0, 1, ...)")
    parser.add_argument("--set", nargs="*", default=[], help="settings of the fine-tuned runs")
    parser.add_argument("--only", choices=("frozen", "finetuned"), help="run only this backbone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    kept = RESULTS / "finetune_protocols.json"
    # Rows run before are kept when only some are run again.
    results = json.loads(kept.read_text())["results"] if kept.exists() and args.only else {}
    tuned = " ".join([f"fine-tuned {args.epochs} epochs", *args.set])
    for label, epochs, overrides in (("frozen", 0, []), (tuned, args.epochs, args.set)):
        if args.only and (epochs > 0) != (args.only == "finetuned"):
            continue
        print(f"{label}:", flush=True)
        results[label] = run(args.storage, epochs, args.splits, overrides)
        print(table({label: results[label]}), flush=True)
    print(table(results))
    save("finetune_protocols", {"splits": args.splits, "results": results,
                                "table": table(results)})  # fmt: skip


if __name__ == "__main__":
    main()
