"""The detector's model: a linear SVM that tells inpainted cells from real ones, and how its cell
decision values become an image's score, a label and a probability; saving it without pickle.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import roc_curve
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from deepfake.hashing import sha256


def cell_svm(alpha: float, seed: int, epochs: int = 8) -> Pipeline:
    """Scaler and linear SVM (hinge loss, L2 penalty ``alpha``), fitted by ``epochs`` passes of
    averaged stochastic gradient descent: about 15x faster than liblinear on tens of thousands
    of cells, as accurate on held-out cells; classes weighted evenly."""
    svm = SGDClassifier(loss="hinge", alpha=alpha, class_weight="balanced", max_iter=epochs,
                        tol=None, average=True, random_state=seed)  # fmt: skip
    return Pipeline([("scale", StandardScaler()), ("svm", svm)])


def linear_form(pipeline: Pipeline) -> tuple[np.ndarray, float]:
    """(weights, bias) with the scaler folded in: decision(x) = x @ weights + bias, so that many
    fitted models score the cells of an image with one matrix product."""
    scaler, svm = pipeline.named_steps["scale"], pipeline.named_steps["svm"]
    weights = svm.coef_[0] / scaler.scale_
    return weights.astype(np.float64), float(svm.intercept_[0] - weights @ scaler.mean_)


def top_k_mean(decisions: np.ndarray, k: int) -> np.ndarray:
    """An image's score from its cells' decision values (n, cells): the mean of the k highest,
    so that a small inpainted region is not averaged away by the rest of the image."""
    k = min(k, decisions.shape[1])
    return np.sort(decisions, axis=1)[:, -k:].mean(axis=1)


@contextlib.contextmanager
def _portable_warning_filters() -> Iterator[None]:
    """scikit-learn hands the parent's warning filters to its parallel workers; one filter whose
    category is a torch class (torch adds some) makes every worker import torch, about 0.6 GB
    each. While the workers run, keep only the filters of built-in, numpy, scipy and
    scikit-learn categories."""
    light = ("builtins", "numpy", "scipy", "sklearn")
    with warnings.catch_warnings():
        kept = [f for f in warnings.filters if f[2].__module__.split(".")[0] in light]
        warnings.resetwarnings()
        for action, message, category, module, lineno in reversed(kept):
            # A filter holds compiled patterns, or plain strings when a library added it raw.
            text = getattr(message, "pattern", message) or ""
            where = getattr(module, "pattern", module) or ""
            warnings.filterwarnings(action, text, category, where, lineno)
        yield


def validation_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The decision threshold maximising balanced accuracy (Youden's J) on validation scores."""
    fpr, tpr, thresholds = roc_curve(y, scores)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]) if np.isfinite(thresholds[best]) else 0.0


def platt_calibration(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Platt scaling of validation decision values: P(inpainted) = 1 / (1 + exp(-(a s + b))).

    As in Platt (1999), the targets are (n+ + 1) / (n+ + 2) and 1 / (n- + 2) rather than 1 and 0,
    so that well separated scores give confident but finite odds. Classes are weighted evenly: a
    probability assumes even odds of real and inpainted, not the training set's one real image
    per five inpaintings.
    """
    positive, negative = int((y == 1).sum()), int((y == 0).sum())
    target = np.where(y == 1, (positive + 1) / (positive + 2), 1 / (negative + 2))
    balance = np.where(y == 1, len(y) / (2 * positive), len(y) / (2 * negative))
    X = np.concatenate([scores, scores]).reshape(-1, 1)
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weights = np.concatenate([target * balance, (1 - target) * balance])
    fit = LogisticRegression(C=1e4).fit(X, labels, sample_weight=weights)
    return {"a": float(fit.coef_[0, 0]), "b": float(fit.intercept_[0])}


def probability(scores: np.ndarray, calibration: dict[str, float]) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(calibration["a"] * np.asarray(scores) + calibration["b"])))


def dump_model(model: Any) -> bytes:
    # skops, not pickle: loading a model file must never run code that came with the file.
    # Imported here, not at the top: skops.io imports every scikit-learn module (and so torch),
    # and the detector's parallel workers import this module to fit models.
    import skops.io as sio

    return canonical_skops(sio.dumps(model))


_SKOPS_ID = re.compile(r'(?<="__id__": )\d+|(?<=")\d+(?=\.npy")')


def canonical_skops(data: bytes) -> bytes:
    """The same skops file with reproducible bytes: object ids (memory addresses in skops' output)
    renumbered in order of appearance, members sorted, timestamps fixed. The same fitted model
    then has the same sha256 in every run."""
    source = zipfile.ZipFile(io.BytesIO(data))
    numbers: dict[str, str] = {}

    def renumber(match: re.Match[str]) -> str:
        return numbers.setdefault(match.group(0), str(len(numbers) + 1))

    schema = _SKOPS_ID.sub(renumber, source.read("schema.json").decode())
    members = {"schema.json": schema.encode()}
    for name in source.namelist():
        if name != "schema.json":
            stem, _, suffix = name.partition(".")
            members[f"{numbers.get(stem, stem)}.{suffix}"] = source.read(name)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, members[name])
    return out.getvalue()


def load_model(data: bytes, name: str, expected_sha256: str | None = None) -> Any:
    """A fitted pipeline from the bytes of the skops file ``name``; refuses a file whose digest
    differs from ``expected_sha256``, and any file holding a type outside scikit-learn's and
    numpy's own (skops' default trust)."""
    import skops.io as sio  # see dump_model

    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise ValueError(f"{name}: digest does not match its metadata")
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # not a zip, no schema, ...: nothing in it is ever executed
        raise ValueError(f"{name}: not a skops model file ({type(exc).__name__})") from None
    if untrusted:
        raise ValueError(f"{name}: refusing untrusted types {untrusted}")
    return sio.loads(data, trusted=[])
