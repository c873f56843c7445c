"""Scoring image files with a trained detector bundle (``deepfake.detector.bundle``): files,
folders and s3:// prefixes, one result per image, bad files named, heat maps on request."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from deepfake.detector.bundle import Detector, load_detector
from deepfake.images import MAX_FILE_BYTES, ImageError
from deepfake.sources.folder import IMAGE_SUFFIXES
from deepfake.storage import Refused, Storage, StorageError

__all__ = ["Detector", "check_path", "expand", "load_detector", "score_paths"]


def check_path(path: str) -> None:
    """``StorageError`` when ``path`` (a file, folder or s3:// prefix) is not there or may not
    be read, naming it and why."""
    folder = Storage(path)
    try:
        found = folder.exists("") or bool(folder.list_files(""))
    except PermissionError:
        raise StorageError(f"{path}: access denied") from None
    except OSError as exc:
        raise StorageError(f"{path}: cannot be reached ({type(exc).__name__})") from None
    if not found:
        raise StorageError(f"{path}: no such file or folder")


def expand(paths: list[str]) -> Iterator[tuple[str, Storage, str]]:
    """(display path, storage, relative name) of every image file named or inside a folder."""
    for path in paths:
        folder = Storage(path)
        if folder.list_files(""):  # a folder (or prefix): every image below it
            for rel in sorted(folder.list_files("")):
                if rel.lower().endswith(IMAGE_SUFFIXES):
                    yield posixpath.join(path.rstrip("/"), rel), folder, rel
        else:
            yield (path, *Storage.locate(path))


def score_paths(
    detector: Detector, paths: list[str], heatmaps: str | None = None
) -> Iterator[dict[str, Any]]:
    """One result per image: ``{"path", "score", "label"}``, or ``{"path", "error"}`` when it
    could not be read or decoded. With ``heatmaps`` (a folder or s3:// prefix), each image's
    heat map is written there as ``<name>.heatmap.png``."""
    out = Storage(heatmaps) if heatmaps else None
    for shown, folder, rel in expand(paths):
        try:
            data = folder.read_bytes(rel, limit=MAX_FILE_BYTES)
            image = detector.normalise(data, shown)
            result = detector.score_image(image)
            if out is not None:
                name = posixpath.basename(rel) + ".heatmap.png"
                out.write_bytes(name, detector.heatmap_png(image))
        except (ImageError, StorageError, OSError) as exc:
            why = exc.reason if isinstance(exc, Refused) else str(exc)
            message = why if shown in why else f"{shown}: {why}"
            yield {"path": shown, "error": message}
            continue
        yield {"path": shown, "score": round(result["score"], 6), "label": result["label"]}
