"""Where real images come from: ``data.source`` is one of these names.

A source is a module with

- ``Config``: its own settings section (a ``Section``; it appears as ``data.<name>.*``),
- ``preflight(storage, cfg)``: raises ``Unavailable`` (naming what is missing and how to provide
  it) when the source cannot be used as configured; called before any work,
- ``inputs(storage, cfg)``: what identifies the data the source would read now (a folder's
  listing with content digests or ETags, an archive's digest): part of the stage's key, so that
  new or changed data is read again and unchanged data is not,
- ``prepare(storage, cfg, folder) -> (rows, skipped)``: writes the normalised source images under
  ``folder`` (and any files of its own, such as Kaggle's external test set) and returns their
  manifest rows and the inputs it had to skip, with the reason.

``cfg`` is the whole ``data`` section (``limit``, ``image_size``, ``seed`` and every source's
section). Adding a source is one such module and one entry here. The settings import these
modules, so a source imports pandas, torch and the like inside its functions only.
"""

from __future__ import annotations

from types import ModuleType

from deepfake.sources import folder, kaggle, sample

SOURCES: dict[str, ModuleType] = {
    "sample": sample,  # bundled photographs, offline
    "folder": folder,  # a user's folder (local or s3://)
    "kaggle": kaggle,  # Kaggle DeepfakeArt (download, prune, external set)
}


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise ValueError(f"unknown data.source {name!r}; choose from {list(SOURCES)}")
    return SOURCES[name]
