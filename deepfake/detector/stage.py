"""The detector stage: a linear SVM on cell features, trained on the training split; an image's
score is the mean of its k highest cell decision values (see ``training`` for how its penalty, k and
threshold are chosen on held-out data only).

The stage folder is a complete detector bundle: ``svm.skops`` (the fitted cell pipeline),
``detector.json`` (how cells are made, the aggregation, threshold, probability calibrations,
digests) and, for a fine-tuned backbone, ``backbone.safetensors``. Its manifest gives every
record its score and heat map (the cells' decision values), test images included.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from deepfake.detector import copyrule, heldout
from deepfake.detector.bundle import write_bundle
from deepfake.detector.model import (
    cell_svm,
    dump_model,
    linear_form,
    platt_calibration,
    probability,
)
from deepfake.detector.scoring import score_uris
from deepfake.detector.settings import HeldOut, SVMConfig
from deepfake.detector.training import Fold, LinearModel, cell_labels, search_alpha
from deepfake.features.stage import (
    cell_matrix,
    feature_extractor,
    features_info,
    finetuned_weights,
    with_cells,
)
from deepfake.hashing import digest_of, sha256
from deepfake.images import decode_png_array
from deepfake.progress import Progress
from deepfake.stages import StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "detector"
SEARCH_FILE = "search.json"
PROTOCOLS_FILE = "protocols.json"
CELL_COLUMNS = ["cells", "cell_index", "cell_coverage", "part", "part_sha256"]
# What shapes the models and scores besides the settings (every image's cells are made again).
PACKAGES = ("scikit-learn", "skops", "numpy", "torch", "timm", "torchvision")


def _cell_calibration(
    frame: pd.DataFrame, folds: list[Fold], decisions: np.ndarray
) -> dict[str, float]:
    """Platt scaling of held-out cell decision values (the sampled cells of each fold's
    held-out images, under the fold's model): a heat map's probability per cell."""
    ys, ds = [], []
    for index, fold in enumerate(folds):
        for position in fold.held_out:
            row = frame.iloc[position]
            ds.append(decisions[position, np.asarray(row["cell_index"]), index])
            ys.append(cell_labels(np.asarray(row["cell_coverage"])))
    return platt_calibration(np.concatenate(ys), np.concatenate(ds))


def train_detector(
    storage: Storage,
    cfg: SVMConfig,
    features: StageOutput,
    protocols: HeldOut | None = None,
) -> StageOutput:
    """Search, choose on held-out data, refit on the training split; score every record. With
    ``protocols``, also the held-out detectors the evaluation reports (``protocols.json``)."""
    protocols = protocols or HeldOut()

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
        frame = with_cells(storage, features)
        info = features_info(storage, features)
        progress = Progress("svm search", 10, unit="tenths", log=False)
        alpha, alpha_auc, pipeline, fitted = _fit(frame, int(info["cell_dim"]), protocols, cfg)
        progress.advance(4)
        decisions = _score_all(storage, features, frame, fitted)
        if not cfg.copy_rule:  # the rule sees no copies: it never fires
            decisions[..., -1] = 0.0
        progress.advance(5)
        copied = decisions[..., -1]
        outcomes = heldout.results(fitted, decisions, copied, frame, cfg.top_k)
        chosen = {k: v for k, v in outcomes[0].items() if not k.startswith("test_")}
        chosen["cell_calibration"] = _cell_calibration(frame, fitted[0].folds, decisions)
        log.info("detector: top-%d aggregation, threshold %.4f (chosen on held-out photos and "
                 "families of fill)", chosen["top_k"], chosen["threshold"])  # fmt: skip
        model = dump_model(pipeline)
        if not cfg.copy_rule:
            chosen["copy_threshold"] = None
        files = _write(storage, folder, features, info, alpha, alpha_auc, chosen, model, outcomes)
        final = decisions[..., len(fitted[0].folds)]  # the main detector's final model
        share = copyrule.shares(copied)
        rule = chosen["copy_threshold"] if cfg.copy_rule else np.inf
        score = copyrule.image_scores(final, chosen["top_k"], share, chosen["threshold"], rule)
        heat = copyrule.fuse_cells(final, copied, share, rule)
        out = frame.drop(columns=[c for c in CELL_COLUMNS if c in frame]).assign(
            score=score,
            copied=share,
            heat=[row.astype(np.float16).tolist() for row in heat],
        )
        progress.advance()
        return out, files

    settings = digest_of([cfg.result_dict(), protocols.model_dump()])
    folder = stage_folder(STAGE, settings, features, packages=PACKAGES)
    return run_stage(storage, STAGE, folder, work)


def _fit(
    frame: pd.DataFrame, cell_dim: int, protocols: HeldOut, cfg: SVMConfig
) -> tuple[float, dict[float, float], Any, list[heldout.Protocol]]:
    """The penalty (grouped search on the main split's training cells), the main pipeline
    refitted on them, and every protocol's fold and final models."""
    X, coverage, cell_rows = cell_matrix(frame, cell_dim)
    y = cell_labels(coverage)
    planned = heldout.plan(frame, protocols.repeats, protocols.test_size, protocols.seed,
                           protocols.leave_out())  # fmt: skip
    main = planned[0]
    if not np.array_equal(np.flatnonzero(frame["split"].to_numpy() == "train"), main.train):
        raise ValueError("the held-out protocols' first split is not the split stage's")
    in_main = np.isin(cell_rows, main.train)
    log.info("detector: %d training cells from %d images", int(in_main.sum()), len(main.train))
    groups = frame["group"].to_numpy()[cell_rows]
    alpha, alpha_auc = search_alpha(X[in_main], y[in_main], groups[in_main], cfg)
    # The main detector, fitted once: the model the bundle keeps, and the main split's final.
    pipeline = cell_svm(alpha, cfg.seed, cfg.epochs).fit(X[in_main], y[in_main])
    main_final = LinearModel(*linear_form(pipeline))
    fitted = heldout.fit(planned, frame, X, y, cell_rows, alpha, cfg, first_final=main_final)
    log.info("detector: alpha %s (grouped CV cell ROC-AUC %.4f); %d held-out detectors",
             alpha, alpha_auc[alpha], len(fitted) - 1)  # fmt: skip
    return alpha, alpha_auc, pipeline, fitted


def _score_all(
    storage: Storage, features: StageOutput, frame: pd.DataFrame, fitted: list[heldout.Protocol]
) -> np.ndarray:
    """(images, cells, models + 1): every cell of every image under every model of every
    protocol, and (last column) its copied share for the copy rule, in one pass over the
    images."""
    every = heldout.models(fitted)
    extractor = feature_extractor(storage, features)
    weights, biases = copyrule.with_channel(
        [m.weights for m in every], [m.bias for m in every], extractor
    )
    return score_uris(
        extractor,
        storage,
        list(frame["uri"]),
        weights,
        biases,
        read=lambda uri, data: decode_png_array(data, uri),
    )


def _write(
    storage: Storage, folder: str, features: StageOutput, info: dict[str, Any], alpha: float,
    alpha_auc: dict[float, float], chosen: dict[str, Any], model: bytes,
    outcomes: list[dict[str, Any]],
) -> list[str]:  # fmt: skip
    """The bundle, ``search.json`` and ``protocols.json``; returns the names written."""
    search = {
        "alpha": alpha,
        "alpha_cell_roc_auc": alpha_auc,
        **chosen,
        "model_sha256": sha256(model),
        "threshold_rule": "max mean balanced accuracy over held-out (photos x family of fill) "
        "folds of the training split",
    }
    storage.write_json(f"{folder}/{SEARCH_FILE}", search)
    files = [SEARCH_FILE]
    if len(outcomes) > 1:
        storage.write_json(f"{folder}/{PROTOCOLS_FILE}", outcomes[1:])
        files.append(PROTOCOLS_FILE)
    weights = finetuned_weights(storage, features)
    return files + write_bundle(storage, folder, _bundle(info, alpha, chosen), model, weights)


def search_results(storage: Storage, detector: StageOutput) -> dict[str, Any]:
    """What the stage chose and how (``search.json``): penalty, k, threshold, calibration, the
    held-out folds' figures."""
    return storage.read_json(f"{detector.folder}/{SEARCH_FILE}")


def protocol_results(storage: Storage, detector: StageOutput) -> list[dict[str, Any]]:
    """The held-out detectors' choices and test scores (``protocols.json``; empty without)."""
    uri = f"{detector.folder}/{PROTOCOLS_FILE}"
    return storage.read_json(uri) if storage.exists(uri) else []


def _bundle(info: dict[str, Any], alpha: float, chosen: dict[str, Any]) -> dict[str, Any]:
    return {
        **info,
        "alpha": alpha,
        "top_k": chosen["top_k"],
        "threshold": chosen["threshold"],
        "calibration": {"method": "Platt, even odds, held-out scores", **chosen["calibration"]},
        "cell_calibration": chosen["cell_calibration"],
        "copy_rule": None
        if chosen["copy_threshold"] is None
        else {
            "threshold": chosen["copy_threshold"],
            "gain": copyrule.GAIN,
            "channel": copyrule.CHANNEL
            + (f" + {copyrule.NEAR_CHANNEL}" if info.get("near_copies") else ""),
        },  # fmt: skip
        "probability_threshold": float(probability(chosen["threshold"], chosen["calibration"])),
        "score": "probability of inpainting (Platt-scaled mean of the image's top-k cell "
        "decision values, lifted by the copy rule, even odds); label inpainted when that value "
        ">= threshold",
    }
