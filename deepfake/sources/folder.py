"""A user's own folder (local or any fsspec URL) of real images, searched recursively: the
``folder`` source of the sources stage (each file is its own group)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from PIL import Image

from deepfake.config import DataConfig
from deepfake.hashing import sha256
from deepfake.images import ImageError, decode
from deepfake.sources.common import Row, prepare_candidates
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
    return f"{stem}_{sha256(rel.encode())[:8]}"


def _loader(store: Storage, rel: str):  # noqa: ANN202 - a closure over one file
    def load() -> Image.Image:
        name = store.uri(rel)
        try:
            data = store.read_bytes(rel)
        except OSError as exc:
            raise ImageError(f"{name}: cannot read ({exc})") from None
        return decode(data, name)

    return load


def prepare(storage: Storage, cfg: DataConfig, folder: str) -> tuple[list[Row], list[Row]]:
    """Every image below ``data.path``, normalised."""
    if not cfg.path:
        raise ValueError("data.source=folder needs data.path=DIR")
    found = folder_images(cfg.path, storage)
    return prepare_candidates(
        storage,
        cfg,
        folder,
        ((sid, group, _loader(store, rel)) for sid, group, rel, store in found),
    )
