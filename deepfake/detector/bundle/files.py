"""The bundle's files (see the package): their names, run ids, the live bundle's pointer, and
writing, reading and checking them without deserialising anything (no scikit-learn, no torch:
publishing a detector that is already live loads neither)."""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

from deepfake.hashing import sha256
from deepfake.storage import Storage

BUNDLE_FILE = "detector.json"
MODEL_FILE = "svm.skops"
WEIGHTS_FILE = "backbone.safetensors"
LATEST = "latest"
POINTER_FILE = f"{LATEST}.json"
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_run_id(run_id: str) -> str:
    """``run_id``, if it can name a run's folders: letters, digits, ``_``, ``.`` and ``-``,
    starting with a letter or digit, and not ``latest``; else ``ValueError``."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or run_id == LATEST:
        raise ValueError(
            f"run id {run_id!r} cannot name a run: use letters, digits, '_', '.' and '-', "
            f"starting with a letter or digit, and not {LATEST!r}"
        )
    return run_id


def live_bundle(storage: Storage, models: str) -> str | None:
    """The folder of the live bundle among ``models`` (``models/<run id>`` as its pointer says),
    or None when there is none. A ``latest`` folder holding a bundle itself (earlier versions
    published so) counts when there is no pointer."""
    pointer = posixpath.join(models, POINTER_FILE) if models else POINTER_FILE
    if storage.exists(pointer):
        run_id = storage.read_json(pointer).get("run_id")
        try:
            return posixpath.join(models, check_run_id(run_id))
        except ValueError as exc:
            raise ValueError(f"{storage.uri(pointer)}: {exc}") from None
    legacy = posixpath.join(models, LATEST)
    return legacy if has_bundle(storage, legacy) else None


def resolve_bundle(storage: Storage, folder: str) -> str:
    """``folder``, or for ``<models>/latest`` the live bundle's folder."""
    parent, name = posixpath.split(folder.rstrip("/"))
    if name != LATEST:
        return folder
    live = live_bundle(storage, parent)
    if live is None:
        raise FileNotFoundError(f"{storage.uri(folder)}: no detector has been published there")
    return live


def point_latest(storage: Storage, models: str, run_id: str) -> None:
    """Make ``models/<run id>`` the live bundle: one atomic write of the pointer."""
    storage.write_json(posixpath.join(models, POINTER_FILE), {"run_id": check_run_id(run_id)})


def write_bundle(
    storage: Storage, folder: str, meta: dict[str, Any], model: bytes, weights: bytes | None
) -> list[str]:
    """Write a bundle's files into ``folder`` (``meta`` gains the files' digests); returns the
    names written."""
    storage.write_bytes(f"{folder}/{MODEL_FILE}", model)
    meta = {**meta, "svm_sha256": sha256(model), "weights": None}
    names = [MODEL_FILE, BUNDLE_FILE]
    if weights is not None:
        storage.write_bytes(f"{folder}/{WEIGHTS_FILE}", weights)
        meta.update(weights=WEIGHTS_FILE, weights_sha256=sha256(weights))
        names.append(WEIGHTS_FILE)
    storage.write_json(f"{folder}/{BUNDLE_FILE}", meta)
    return names


def has_bundle(storage: Storage, folder: str) -> bool:
    return storage.exists(f"{folder}/{BUNDLE_FILE}")


def bundle_meta(storage: Storage, folder: str) -> dict[str, Any]:
    return storage.read_json(f"{folder}/{BUNDLE_FILE}")


def _digests(meta: dict[str, Any]) -> dict[str, str | None]:
    """The bundle's data files (name -> the sha256 its metadata gives). The names are fixed:
    never taken from the metadata."""
    digests = {MODEL_FILE: meta.get("svm_sha256")}
    if meta.get("weights"):
        digests[WEIGHTS_FILE] = meta.get("weights_sha256")
    return digests


def bundle_files(storage: Storage, folder: str, extra: dict[str, Any]) -> dict[str, bytes]:
    """Every file of the bundle in ``folder`` (name -> bytes), ``extra`` added to its
    metadata: what publishing copies."""
    meta = bundle_meta(storage, folder)
    files = {name: storage.read_bytes(f"{folder}/{name}") for name in _digests(meta)}
    files[BUNDLE_FILE] = json.dumps({**meta, **extra}, indent=2, sort_keys=True).encode()
    return files


def verified_files(storage: Storage, folder: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The metadata and the model and weights files (name -> bytes) of the bundle in ``folder``
    (``<models>/latest``: the live one), each file checked against its digest; ``ValueError``
    naming the file otherwise. Nothing is deserialised."""
    folder = resolve_bundle(storage, folder)
    meta = bundle_meta(storage, folder)
    files = {}
    for name, digest in _digests(meta).items():
        data = storage.read_bytes(f"{folder}/{name}")
        if sha256(data) != digest:
            raise ValueError(f"{storage.uri(folder)}/{name}: digest does not match its metadata")
        files[name] = data
    return meta, files
