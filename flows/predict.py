"""Score images with a trained detector: files or folders, local or S3.

    python flows/predict.py PATH... [--model URL] [--json] [--heatmaps DIR] [--storage URL]

One line per image: path, the probability that it was inpainted, and the label at the detector's
validated threshold. With ``--json``: JSON lines with ``path``, ``score`` (that probability),
``label`` (``inpainted`` or ``real``), or ``path`` and ``error`` for a file that could not be
read. Unreadable files make the exit status 1 at the end; every other image is still scored.
``--heatmaps DIR`` writes each image's heat map (``<name>.heatmap.png``: the image tinted by the
probability that each region was inpainted, red = inpainted, blue = real).
As a Prefect flow (``batch_predict``) the same scoring writes ``predictions.jsonl`` to storage,
for the batch-prediction deployment.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from prefect import flow, get_run_logger

from deepfake.devices import resolve_device
from deepfake.predict import check_path, load_detector, score_paths
from deepfake.section import Unavailable
from deepfake.storage import Storage, StorageError
from tasks._common import prepare_process

# Whoever runs these flows (this command, a worker) first readies the process: logs redacted
# and sent to the run, progress as artifacts.
prepare_process()


@flow(name="batch-predict", result_serializer="json")
def batch_predict(
    paths: list[str], model: str = "storage/models/latest", output: str | None = None
) -> dict[str, int]:
    """Score every image under ``paths``; write JSON lines to ``output`` (default: beside the
    model, ``predictions.jsonl``)."""
    logger = get_run_logger()
    detector = load_detector(model)
    results = list(score_paths(detector, paths))
    lines = "".join(json.dumps(r) + "\n" for r in results)
    target = output or Storage(model).uri("predictions.jsonl")
    folder, name = Storage.locate(target)
    folder.write_bytes(name, lines.encode())
    errors = sum("error" in r for r in results)
    logger.info("scored %d images, %d unreadable; wrote %s", len(results) - errors, errors, target)
    return {"scored": len(results) - errors, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python flows/predict.py", description="Score images with a trained detector."
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (or s3://)"
    )
    parser.add_argument("--storage", default="storage", help="storage root [storage]")
    parser.add_argument("--model", help="detector bundle [<storage>/models/latest]")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    parser.add_argument("--device", default="auto", help="torch device [auto]")
    parser.add_argument(
        "--heatmaps",
        metavar="DIR",
        help="write each image's heat map (where it was inpainted) to DIR as <name>.heatmap.png",
    )
    args = parser.parse_args(argv)
    logging.getLogger("deepfake").setLevel(logging.WARNING)
    model = args.model or Storage(args.storage).uri("models", "latest")
    try:
        for path in args.paths:  # each named path must be there and readable: a usage error
            check_path(path)
        resolve_device(args.device)
    except (Unavailable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        detector = load_detector(model, args.device)
    except (StorageError, OSError, ValueError, KeyError) as exc:
        print(f"error: cannot load the detector at {model}: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for result in score_paths(detector, args.paths, args.heatmaps):
        failed += "error" in result
        if args.json:
            print(json.dumps(result), flush=True)
        elif "error" in result:
            print(f"{result['path']}\terror: {result['error']}", flush=True)
        else:
            print(f"{result['path']}\t{result['score']:.4f}\t{result['label']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
