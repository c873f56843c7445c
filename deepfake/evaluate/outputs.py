"""The evaluation stage's files as later steps read them (publishing, the benchmarks): its figures
(``metrics.json``), report and plots. Light: reading them loads no scikit-learn or plotting."""

from __future__ import annotations

from typing import Any

from deepfake.stages import MANIFEST, StageOutput
from deepfake.storage import Storage

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"


def evaluation_metrics(storage: Storage, evaluation: StageOutput) -> dict[str, Any]:
    """The evaluation's figures (``metrics.json``)."""
    return storage.read_json(f"{evaluation.folder}/{METRICS_FILE}")


def evaluation_files(storage: Storage, evaluation: StageOutput) -> dict[str, bytes]:
    """Every file of the evaluation but its manifest (report, metrics, plots), by name."""
    names = sorted(storage.list_files(evaluation.folder) - {MANIFEST})
    found = storage.read_many([f"{evaluation.folder}/{name}" for name in names])
    out = {}
    for name, data in zip(names, found, strict=True):
        if isinstance(data, Exception):
            raise data
        out[name] = data
    return out
