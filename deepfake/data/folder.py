"""A user's own folder (local or any fsspec URL) of real images, searched recursively."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from deepfake.storage import Storage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def folder_images(
    root: str, near: Storage | None = None
) -> Iterator[tuple[str, str, str, Storage]]:
    """Yield (source id, group, relative path, storage) for every image file below ``root``
    (an ``s3://`` root is reached like the ``near`` storage, when given)."""
    storage = near.sibling(root) if near is not None else Storage(root)
    if not storage.exists(""):
        raise FileNotFoundError(f"data.path {root}: no such folder")
    for rel in sorted(storage.list_files("")):
        if not rel.lower().endswith(IMAGE_SUFFIXES) or "/." in f"/{rel}":
            continue
        source_id = source_id_for(rel)
        yield source_id, source_id, rel, storage


def source_id_for(rel: str) -> str:
    """A readable, file-name-safe id that stays unique for distinct relative paths."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", rel.rsplit(".", 1)[0]).strip("_")[:60]
    return f"{stem}_{hashlib.sha256(rel.encode()).hexdigest()[:8]}"
