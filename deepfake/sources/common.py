"""What the sources share: a reproducible subset, one normalised source image as a manifest row,
and the loop over candidate images that the sample and folder sources use."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from deepfake.hashing import sha256
from deepfake.images import ImageError, encode_png, square
from deepfake.progress import Progress

if TYPE_CHECKING:
    from deepfake.sources.settings import DataConfig
    from deepfake.storage import Storage

log = logging.getLogger("deepfake")

EXTERNAL = "external.parquet"  # a source's own fakes, kept apart as an external test set
# (source id, group, load) where load() returns a PIL image or raises ImageError
Candidate = tuple[str, str, Callable[[], Image.Image]]
Row = dict[str, Any]


def choose_subset(ids: list[str], limit: int | None, seed: int) -> list[int]:
    """Indices of a reproducible subset of ``limit`` ids (all, when no limit)."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    if limit is None or limit >= len(ids):
        return order
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(order), size=limit, replace=False)
    return sorted((order[i] for i in picked), key=ids.__getitem__)


def source_row(
    put: Callable[[str, bytes], None], folder: str, source_id: str, group: str, image: Image.Image
) -> Row:
    """Write one normalised source image; its manifest row."""
    data = encode_png(np.asarray(image))
    uri = f"{folder}/images/{source_id}.png"
    put(uri, data)
    return {
        "record_id": source_id,
        "source_id": source_id,
        "group": group,
        "variant": "real",
        "label": 0,
        "uri": uri,
        "sha256": sha256(data),
        "width": image.width,
        "height": image.height,
    }


def prepare_candidates(
    storage: Storage,
    cfg: DataConfig,
    folder: str,
    candidates: Iterable[Candidate],
    where: str = "",
) -> tuple[list[Row], list[Row]]:
    """The chosen subset of ``candidates``, normalised and written: (rows, skipped). An image
    that cannot be read is skipped with a warning naming it and the reason."""
    candidates = list(candidates)
    if not candidates:
        raise ValueError(f"no images found for data.source={cfg.source}{where}")
    chosen = [candidates[i] for i in choose_subset([c[0] for c in candidates], cfg.limit, cfg.seed)]
    rows, skipped = [], []
    progress = Progress("sources", len(chosen))
    with storage.batched_writes() as put:
        for source_id, group, load in chosen:
            progress.advance()
            try:
                image = square(load(), cfg.image_size)
            except ImageError as exc:
                log.warning("skipping source %s", exc)
                skipped.append({"source_id": source_id, "reason": str(exc)})
                continue
            rows.append(source_row(put, folder, source_id, group, image))
    if not rows:
        raise ValueError(f"none of the {len(chosen)} source images could be read: {skipped[:3]}")
    return rows, skipped
