"""Where real images come from: ``data.source`` is one of these names.

A source is a module with ``prepare(storage, cfg, folder) -> (rows, skipped)``: it writes the
normalised source images under ``folder`` (and any files of its own, such as Kaggle's external
test set) and returns their manifest rows and the inputs it had to skip, with the reason. Adding
a source is one such module and one entry here. Entries name modules, so that the settings can
list the sources without importing them.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

SOURCES: dict[str, str] = {
    "sample": "deepfake.sources.sample",  # bundled photographs, offline
    "folder": "deepfake.sources.folder",  # a user's folder (local or s3://)
    "kaggle": "deepfake.sources.kaggle",  # Kaggle DeepfakeArt (download, prune, external set)
}


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise ValueError(f"unknown data.source {name!r}; choose from {list(SOURCES)}")
    return import_module(SOURCES[name])
