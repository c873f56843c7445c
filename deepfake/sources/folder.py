"""A user's own folder (local or any fsspec URL) of real images, searched recursively: the
``folder`` source of the sources stage (settings ``data.folder.*``; each file is its own group)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from PIL import Image
from pydantic import Field, field_validator

from deepfake.hashing import sha256
from deepfake.images import ImageError, decode
from deepfake.section import Section, Unavailable
from deepfake.sources.common import Row, prepare_candidates
from deepfake.storage import Refused, Storage, is_permanent

if TYPE_CHECKING:
    from deepfake.sources.settings import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class Config(Section):
    path: str | None = Field(
        None, description="Folder (or s3:// prefix) of real images, searched recursively."
    )

    @field_validator("path")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() if value else value


def folder_images(
    root: str, near: Storage | None = None
) -> Iterator[tuple[str, str, str, Storage]]:
    """Yield (source id, group, relative path, storage) for every image file below ``root``
    (an ``s3://`` root is reached like the ``near`` storage, when given)."""
    storage = _folder(root, near)
    for rel in sorted(storage.list_files("")):
        if not rel.lower().endswith(IMAGE_SUFFIXES) or "/." in f"/{rel}":
            continue
        source_id = source_id_for(rel)
        yield source_id, source_id, rel, storage


def _folder(root: str, near: Storage | None) -> Storage:
    storage = near.sibling(root) if near is not None else Storage(root)
    if not storage.exists(""):
        raise Unavailable(f"data.folder.path {root}: no such folder")
    return storage


def source_id_for(rel: str) -> str:
    """A readable, file-name-safe id that stays unique for distinct relative paths."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", rel.rsplit(".", 1)[0]).strip("_")[:60]
    return f"{stem}_{sha256(rel.encode())[:8]}"


def _loader(storage: Storage, rel: str, limit: int):  # noqa: ANN202 - a closure over one file
    def load() -> Image.Image:
        name = storage.uri(rel)
        try:
            data = storage.read_bytes(rel, limit=limit)
        except OSError as exc:
            if not is_permanent(exc):
                raise  # a read that may pass: the task tries again, nothing is skipped
            why = exc.reason if isinstance(exc, Refused) else f"cannot read ({exc})"
            raise ImageError(f"{name}: {why}") from None
        return decode(data, name)

    return load


def preflight(storage: Storage, cfg: DataConfig) -> None:
    """``data.folder.path`` is set and is a folder."""
    if not cfg.folder.path:
        raise Unavailable("data.source=folder needs data.folder.path=DIR")
    _folder(cfg.folder.path, storage)


def inputs(storage: Storage, cfg: DataConfig) -> dict[str, str]:
    """The folder's listing: every file with its size and content digest (ETag on S3)."""
    preflight(storage, cfg)
    return _folder(cfg.folder.path, storage).fingerprints("", cfg.max_file_bytes)  # type: ignore[arg-type]


def prepare(storage: Storage, cfg: DataConfig, folder: str) -> tuple[list[Row], list[Row]]:
    """Every image below ``data.folder.path``, normalised."""
    preflight(storage, cfg)
    found = folder_images(cfg.folder.path, storage)  # type: ignore[arg-type]
    return prepare_candidates(
        storage,
        cfg,
        folder,
        (
            (sid, group, _loader(images, rel, cfg.max_file_bytes))
            for sid, group, rel, images in found
        ),  # fmt: skip
        where=f" in {cfg.folder.path}",
    )
