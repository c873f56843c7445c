"""What every stage shares: manifests, deterministic output folders, completion checks, the
stage skeleton (``run_stage``).

A stage writes its files under ``<stage>/<digest>/`` where the digest covers the stage's settings,
the digests of its inputs, the library's code and the versions of the packages that shape its
outputs (``packages``), then writes ``manifest.parquet`` last. A folder whose manifest
exists and whose listed files are all present (the images its rows point to, and the stage's own
files named in the manifest's metadata) is finished work; anything else is redone.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from importlib import metadata
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from deepfake.hashing import digest_of, sha256
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

MANIFEST = "manifest.parquet"
MANIFEST_COLUMNS = ["record_id", "source_id", "group", "variant", "label", "uri", "sha256"]
_FILES_KEY = "deepfake.files"


def _library_digest() -> str:
    """Digest of the library's source: any change to the code that makes outputs is a new key.

    Coarse on purpose (an edit anywhere in deepfake/ recomputes every stage): a stale result from
    older code is worse than a recomputation.
    """
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


CODE_VERSION = _library_digest()


@cache
def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of distributions by name (``a|b``: the first of alternatives that is
    installed; "absent" when none is)."""
    out = {}
    for name in names:
        for alternative in name.split("|"):
            try:
                out[name] = metadata.version(alternative)
                break
            except metadata.PackageNotFoundError:
                out[name] = "absent"
    return out


@cache
def dependency_versions() -> dict[str, str]:
    """The installed version of every package this project depends on (what a cache of any
    stage's result must be keyed on: an upgrade of any of them may change some output)."""
    from packaging.requirements import Requirement

    try:
        requirements = [Requirement(r) for r in metadata.requires("deepfake-inpainting") or []]
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        requirements = []
    runtime = {r.name for r in requirements if r.marker is None}  # not the dev extras
    return package_versions(*sorted(runtime))


class StageOutput(BaseModel):
    """A finished stage: where its manifest lies and the digest of that manifest."""

    model_config = ConfigDict(frozen=True)

    stage: str
    folder: str
    digest: str
    records: int

    @property
    def manifest(self) -> str:
        return f"{self.folder}/{MANIFEST}"


def stage_folder(
    stage: str, settings_digest: str, *inputs: StageOutput, packages: Sequence[str] = ()
) -> str:
    """Deterministic output folder of ``stage`` for these settings and inputs, made by this code
    with these versions of ``packages``."""
    versions = package_versions(*packages)
    key = digest_of([stage, CODE_VERSION, settings_digest, [i.digest for i in inputs], versions])
    return f"{stage}/{key[:20]}"


def finished(storage: Storage, stage: str, folder: str) -> StageOutput | None:
    """The stage's output when its manifest and every file it lists exist, else None."""
    if not storage.exists(f"{folder}/{MANIFEST}"):
        return None
    data = storage.read_bytes(f"{folder}/{MANIFEST}")
    frame = pd.read_parquet(io.BytesIO(data), engine="pyarrow")
    present = storage.list_files(folder)
    own = [u[len(folder) + 1 :] for u in frame.get("uri", []) if u.startswith(folder + "/")]
    own += json.loads(Storage.parquet_metadata(data).get(_FILES_KEY, "[]"))
    if any(rel not in present for rel in own):
        log.warning("%s: outputs listed in %s are missing; redoing the stage", stage, folder)
        return None
    return StageOutput(stage=stage, folder=folder, digest=sha256(data), records=len(frame))


def write_manifest(
    storage: Storage, stage: str, folder: str, frame: pd.DataFrame, files: Iterable[str] = ()
) -> StageOutput:
    """Write the manifest last, making the folder finished work. ``files`` (relative to the
    folder) are the stage's own outputs besides the images its rows point to: the folder counts
    as finished only while they exist too."""
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{stage} manifest lacks columns {missing}")
    frame = frame.sort_values("record_id", kind="stable").reset_index(drop=True)
    metadata = {_FILES_KEY: json.dumps(sorted(files))}
    data = storage.write_parquet(f"{folder}/{MANIFEST}", frame, metadata)
    return StageOutput(stage=stage, folder=folder, digest=sha256(data), records=len(frame))


# work(folder) writes a stage's files and returns its manifest rows and the names of its other
# files (relative to the folder).
StageWork = Callable[[str], tuple[pd.DataFrame, Sequence[str]]]


def run_stage(storage: Storage, stage: str, folder: str, work: StageWork) -> StageOutput:
    """The skeleton of every stage: the finished output in ``folder`` when there is one;
    otherwise ``work(folder)``, then the manifest, written last."""
    done = finished(storage, stage, folder)
    if done:
        log.info("%s: reusing %d finished records in %s", stage, done.records, storage.uri(folder))
        return done
    frame, files = work(folder)
    return write_manifest(storage, stage, folder, frame, files)
