"""End-to-end pipeline: sources -> masks -> inpainting -> split -> features -> SVM -> evaluation
-> publish.

python flows/main.py                          # the offline default
python flows/main.py --set data.limit=40 --set svm.cv_folds=3
python flows/main.py --config my.yaml --storage s3://bucket/prefix
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from functools import partial
from typing import Any

from prefect import Task, flow
from prefect.filesystems import WritableFileSystem

from deepfake.config import ConfigError, Settings, describe_settings, load_settings
from deepfake.detector.bundle import check_run_id
from deepfake.detector.settings import HeldOut
from deepfake.preflight import preflight
from deepfake.publish import Promote, new_run_id
from deepfake.section import Unavailable
from deepfake.storage import Storage, StorageError
from flows.inpaint import inpaint_stage
from tasks._common import patient_local_server, prepare_process, result_storage_for
from tasks.detector import train_detector
from tasks.evaluate import evaluate_detector, publish
from tasks.features import extract_features
from tasks.masks import make_masks
from tasks.sources import fingerprint_sources, prepare_sources
from tasks.split import split_dataset

# Whoever runs these flows (this command, a worker) first readies the process: logs redacted
# and sent to the run, progress as artifacts.
prepare_process()

# The frozen-backbone baseline that a fine-tuned detector is compared with: the same tasks,
# named apart in the UI.
extract_frozen_features = extract_features.with_options(name="extract-frozen-features")
train_frozen_detector = train_detector.with_options(name="train-frozen-detector")


@flow(name="deepfake-pipeline", result_serializer="json")
def pipeline(
    settings: Settings = Settings(),  # noqa: B008 (a frozen model: the UI's form shows it)
    run_id: str | None = None,
    promote: Promote = "if_better",
) -> dict[str, Any]:
    """Train and evaluate an inpainting detector, reusing every finished stage.

    Args:
        settings: Every setting of the pipeline, by stage (as `python flows/main.py --help`
            lists them); each one left out keeps its default.
        run_id: Name of this run's report and model folders (default: time and settings):
            letters, digits, '_', '.' and '-', not "latest".
        promote: "if_better" makes the new detector the live one (models/latest) only if its
            held-out ROC-AUC is at least the current one's on the same test records; "always"
            whatever it scores (and in place of a current detector that cannot be loaded).
    """
    cfg = settings
    storage = cfg.storage
    run_id = check_run_id(run_id) if run_id is not None else new_run_id(cfg)
    # Task results live beside the pipeline's files, so that any worker, container or later run
    # finds them (a Docker work pool starts a fresh container for every flow run).
    results = result_storage_for(storage)
    stage = partial(_keeping_results, results)

    inputs = fingerprint_sources(storage, cfg.data)
    sources = stage(prepare_sources)(storage, cfg.data, inputs)
    masks = stage(make_masks)(storage, cfg.masks, sources)
    dataset = inpaint_stage(storage, cfg.inpaint, sources, masks, results)
    split = stage(split_dataset)(storage, cfg.split, dataset)
    features = stage(extract_features)(storage, cfg.features, split)
    detector = stage(train_detector)(storage, cfg.svm, features, HeldOut.of(cfg))
    baseline = None
    if cfg.features.finetune_epochs and cfg.evaluate.compare_frozen:
        frozen = stage(extract_frozen_features)(storage, cfg.features.frozen(), split)
        main_split_only = HeldOut.of(cfg).model_copy(
            update={"repeats": 1, "leave_one_family_out": False, "leave_one_method_out": False}
        )
        baseline = stage(train_frozen_detector)(storage, cfg.svm, frozen, main_split_only)
    evaluation = stage(evaluate_detector)(
        storage, cfg, sources, dataset, features, detector, baseline
    )
    return publish(storage, run_id, evaluation, detector, promote, cfg.features.device)


def _keeping_results(results: WritableFileSystem, stage_task: Task) -> Task:
    return stage_task.with_options(result_storage=results)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    rows = describe_settings()
    width = max(len(key) for key, _, _ in rows)
    listing = "\n".join(
        f"  {key:<{width}}  {desc}" + (f" [{default}]" if default else "")
        for key, default, desc in rows
    )
    parser = argparse.ArgumentParser(
        prog="python flows/main.py",
        description="Train and evaluate the inpainting detector, end to end.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings (use with --set KEY=VALUE or in the --config file):\n{listing}",
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="settings file (YAML)")
    parser.add_argument(
        "--storage", metavar="URL", help="storage root: folder or s3://bucket/prefix"
    )
    parser.add_argument(
        "--promote",
        choices=["if_better", "always"],
        default="if_better",
        help="make this detector the live one (models/latest) only if its held-out ROC-AUC is "
        "at least the current one's on the same test records (default), or always (also in "
        "place of a current detector that cannot be loaded)",
    )
    parser.add_argument(
        "--run-id",
        help="name of this run's report and model folders (letters, digits, _ . -; not "
        "'latest'); default: time and settings",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set svm.cv_folds=3 (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_settings(args.config, args.overrides, args.storage)
        if args.run_id is not None:
            check_run_id(args.run_id)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Resolve a relative local root now, so every task (and its cache key) sees the same path.
    root = Storage(cfg.storage.root).root
    cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"root": root})})
    logging.getLogger("deepfake").setLevel(logging.INFO)
    try:
        preflight(cfg)  # storage, source, backend, backbone: before any work
    except (Unavailable, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    with patient_local_server():
        summary = pipeline(settings=cfg, run_id=args.run_id, promote=args.promote)
    summary["wall_seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
