"""The detector bundle's one home: the one folder that holds a trained detector, and everything
that writes, finds, checks and loads it.

A bundle is the detector stage's folder, or ``models/<run id>`` after publishing. Its files have
fixed names: ``detector.json`` (how cells are made, the aggregation, the threshold, the
probability calibrations and the sha256 of the other files), ``svm.skops`` (the fitted cell
pipeline, in skops' format, not pickle) and, for a fine-tuned backbone, ``backbone.safetensors``
(tensors only). Published bundles are written whole and never changed; which one is live is one
small file beside them, ``models/latest.json`` (``{"run_id": ...}``), replaced in one atomic
write; ``models/latest`` names the live bundle wherever a bundle is loaded by name.

Two modules, so that handling the files loads no model library: ``files`` (names, run ids, the
live pointer, writing, reading and checking digests, nothing deserialised) and ``detector`` (the
``Detector`` that loads a bundle, runs no code from it and scores images). Import either's names
from here.
"""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BUNDLE_FILE": "files",
        "LATEST": "files",
        "MODEL_FILE": "files",
        "POINTER_FILE": "files",
        "WEIGHTS_FILE": "files",
        "bundle_files": "files",
        "bundle_meta": "files",
        "check_run_id": "files",
        "has_bundle": "files",
        "live_bundle": "files",
        "point_latest": "files",
        "resolve_bundle": "files",
        "verified_files": "files",
        "write_bundle": "files",
        "Detector": "detector",
        "heat_pixels": "detector",
        "load_detector": "detector",
        "loaded_bundle": "detector",
        "read_bundle": "detector",
        "tint": "detector",
    },
)
