"""Offline sample data: real photographs that ship inside installed packages, cut into tiles.

Nothing is downloaded. Each photo is one group: its tiles are never split across train and test.
The ``sample`` source of the sources stage (settings ``data.sample.*``).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from pydantic import Field

from deepfake.hashing import sha256
from deepfake.images import decode
from deepfake.section import Section
from deepfake.sources.common import Row, prepare_candidates

if TYPE_CHECKING:
    from deepfake.sources.settings import DataConfig
    from deepfake.storage import Storage


class Config(Section):
    max_tiles_per_image: int = Field(12, ge=1, description="At most this many tiles per photo.")


# (group name, package, file inside the package). Greyscale photographs are converted to RGB like
# every other source, so a real image and its inpaintings always share a colour mode. The stereo
# twin of motorcycle_left is left out: the two are nearly the same scene under different names.
SAMPLE_PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage.data", "astronaut.png"),
    ("chelsea", "skimage.data", "chelsea.png"),
    ("coffee", "skimage.data", "coffee.png"),
    ("rocket", "skimage.data", "rocket.jpg"),
    ("hubble_deep_field", "skimage.data", "hubble_deep_field.jpg"),
    ("retina", "skimage.data", "retina.jpg"),
    ("immunohistochemistry", "skimage.data", "ihc.png"),
    ("motorcycle", "skimage.data", "motorcycle_left.png"),
    ("china", "sklearn.datasets.images", "china.jpg"),
    ("flower", "sklearn.datasets.images", "flower.jpg"),
    ("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("camera", "skimage.data", "camera.png"),
    ("coins", "skimage.data", "coins.png"),
    ("moon", "skimage.data", "moon.png"),
    ("brick", "skimage.data", "brick.png"),
    ("grass", "skimage.data", "grass.png"),
    ("gravel", "skimage.data", "gravel.png"),
)


def photo_path(package: str, name: str) -> Path:
    """The file ``name`` shipped inside ``package``, found without importing the package (a
    cached run reads the photos' digests; importing scikit-learn or matplotlib takes seconds)."""
    top, *inside = package.split(".")
    spec = find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named {top!r} (it ships the sample photo {name})")
    return Path(spec.submodule_search_locations[0], *inside, name)


# Tiles flatter than this (pixel standard deviation, 0-255 scale) are left out: inpainting a
# uniform patch (the black border of the retina photo) changes nothing, so such a pair carries
# no label signal and only adds noise to training and evaluation.
MIN_TILE_STD = 8.0


def tile_positions(
    pixels: np.ndarray, side: int, limit: int, min_std: float = MIN_TILE_STD
) -> list[tuple[int, int]]:
    """Grid positions (row, col) of textured, non-overlapping tiles: at most ``limit``, spread."""
    height, width = pixels.shape[:2]
    grid = [
        (r, c)
        for r in range(height // side)
        for c in range(width // side)
        if pixels[r * side : (r + 1) * side, c * side : (c + 1) * side].std() >= min_std
    ]
    if len(grid) <= limit:
        return grid
    picks = np.unique(np.linspace(0, len(grid) - 1, limit).round().astype(int))
    return [grid[i] for i in picks]


def sample_tiles(side: int, max_tiles: int) -> Iterator[tuple[str, str, Image.Image]]:
    """Yield (source id, group, RGB tile of side x side) for every bundled photo."""
    for group, package, name in SAMPLE_PHOTOS:
        path = photo_path(package, name)
        image = decode(path.read_bytes(), str(path))
        for row, col in tile_positions(np.asarray(image), side, max_tiles):
            box = (col * side, row * side, (col + 1) * side, (row + 1) * side)
            yield f"{group}_r{row}c{col}", group, image.crop(box)


def preflight(storage: Storage, cfg: DataConfig) -> None:
    """Nothing to check: the photos come with the installed packages."""


def inputs(storage: Storage, cfg: DataConfig) -> dict[str, str]:
    """The bundled photos' digests (they change only with the packages that ship them)."""
    return {
        group: sha256(photo_path(package, name).read_bytes())
        for group, package, name in SAMPLE_PHOTOS
    }


def prepare(storage: Storage, cfg: DataConfig, folder: str) -> tuple[list[Row], list[Row]]:
    """The sample tiles (``data.sample.max_tiles_per_image`` per photo at most), normalised."""
    tiles = sample_tiles(cfg.image_size, cfg.sample.max_tiles_per_image)
    return prepare_candidates(
        storage, cfg, folder, ((sid, group, lambda t=tile: t) for sid, group, tile in tiles)
    )
