"""A copy search that survives JPEG and downscaling, measured on training images: a lead for the
exemplar fills that the detector loses after either (README "Results"), not part of the pipeline.

The pipeline's copy evidence (``deepfake/features/forensics.py``) is exact copies of 4x4 windows,
which JPEG and resampling destroy. Here a window counts as copied when its nearest window at least
``MIN_OFFSET`` pixels away is within ``TAU`` of its own energy (grey levels, its mean removed)
and its 4 neighbours' nearest windows lie at the very same offset: a copied patch moves all its
windows together, while a real texture's near-matches scatter. Two searches for those nearest
windows:

- ``exhaustive``: every window against every other (the reference; seconds an image here);
- ``hashed``: candidates from a few hash tables of 3 random projections of each window
  (neighbours in each table's sort order), then a pass in which each window also tries its
  neighbours' offsets (a copy found anywhere in a patch spreads over it).
- ``batched``: the same hashed search batched in torch, as the features stage runs it with
  ``features.near_copies`` (``deepfake/features/near_copies.py``: other random projections, and
  OpenCV's grey levels); the share of windows it marks, in the extractor's CPU passes (16
  images of 128 px: ``CPU_PASS_PIXELS``).

Each image's copied share (the share of its windows counted as copied; for comparison, ``exact``:
the pipeline's share of pixels in exact copies) is compared between real training images and
training images filled by the exemplar method (exact copies of 9x9 patches, no post-processing),
clean, after JPEG 80 and after downscaling by 0.5: ROC-AUC and time an image.

    python bench/near_copies.py [--storage storage] [--images 30] [--exhaustive]

It reads the newest split under the storage root (``python flows/main.py`` makes one) and
writes bench/results/near_copies.json (keeping the rows of a search not run this time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from results_file import RESULTS, save
from sklearn.metrics import roc_auc_score

from deepfake.features.extractor import CPU_PASS_PIXELS
from deepfake.features.forensics import as_batch, duplicate_map
from deepfake.features.near_copies import near_copy_maps
from deepfake.perturb import downscale, jpeg

WINDOW = 4
MIN_OFFSET = 8  # a window and its own shifted neighbours are not copies
MIN_STD = 3.0  # grey levels: flatter windows match anything
TAU = 0.2  # nearest window's squared distance over the window's own energy
NONE = 1 << 20  # the offset of a window with no match
NEIGHBOURS = ((0, 1), (0, -1), (1, 0), (-1, 0))
CONDITIONS = {"clean": lambda image: image, "jpeg_80": jpeg(80), "downscale_0.5": downscale(0.5)}


def window_vectors(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Every WINDOW x WINDOW grey window of an RGB uint8 image, its mean removed: (rows * cols,
    WINDOW**2) float32, rows, cols."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    windows = sliding_window_view(grey, (WINDOW, WINDOW))
    rows, cols = windows.shape[:2]
    vectors = windows.reshape(rows * cols, WINDOW * WINDOW)
    return vectors - vectors.mean(1, keepdims=True), rows, cols


def exhaustive_matches(
    v: np.ndarray, cols: int, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Each window's nearest window at least MIN_OFFSET away: squared distance (n,) and offset
    (n, 2), by brute force."""
    n = len(v)
    ys, xs = np.divmod(np.arange(n), cols)
    squares = (v**2).sum(1)
    best, nearest = np.empty(n, np.float32), np.empty(n, np.int64)
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        distance = squares[start:end, None] + squares[None] - 2 * v[start:end] @ v.T
        near = (ys[start:end, None] - ys) ** 2 + (xs[start:end, None] - xs) ** 2 < MIN_OFFSET**2
        distance[near] = np.inf
        nearest[start:end] = distance.argmin(1)
        best[start:end] = np.maximum(distance[np.arange(end - start), nearest[start:end]], 0)
    return best, np.stack([ys[nearest] - ys, xs[nearest] - xs], 1)


def hashed_matches(
    v: np.ndarray, rows: int, cols: int, tables: int = 6, neighbours: int = 3, width: float = 12.0,
    passes: int = 1, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each textured window's nearest window among hashed candidates and its neighbours' offsets
    (see the module's docstring): squared distance (n,) (inf: none) and offset (n, 2)."""
    n, dims = v.shape
    textured = np.flatnonzero((v**2).sum(1) >= MIN_STD**2 * dims)
    ys, xs = np.divmod(textured, cols)
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(tables):
        directions = rng.standard_normal((dims, 4)).astype(np.float32)
        projected = v[textured] @ (directions / np.linalg.norm(directions, axis=0))
        bins = np.floor(projected[:, :3] / width + rng.random(3)).astype(np.int64)
        keys = (bins[:, 0] * 100_003 + bins[:, 1]) * 100_003 + bins[:, 2]
        order = np.lexsort((projected[:, 3], keys))  # within a bin, by a fourth projection
        for step in range(1, neighbours + 1):
            same = keys[order[step:]] == keys[order[:-step]]
            a, b = order[step:][same], order[:-step][same]
            pairs += [np.stack([a, b], 1), np.stack([b, a], 1)]
    a, b = np.concatenate(pairs).T if pairs else (np.zeros(0, np.int64),) * 2
    dy, dx = ys[b] - ys[a], xs[b] - xs[a]
    far = dy**2 + dx**2 >= MIN_OFFSET**2
    a, b, dy, dx = a[far], b[far], dy[far], dx[far]
    distance = ((v[textured[a]] - v[textured[b]]) ** 2).sum(1).astype(np.float32)
    # Each window's nearest first: one sort of the window and the distance's bits (a
    # non-negative float32 orders as its bits do).
    order = np.argsort((a.astype(np.int64) << 32) | distance.view(np.int32), kind="stable")
    first = np.ones(len(order), bool)
    first[1:] = a[order[1:]] != a[order[:-1]]
    chosen = order[first]
    best, offset = np.full(n, np.inf, np.float32), np.full((n, 2), NONE, np.int64)
    best[textured[a[chosen]]] = distance[chosen]
    offset[textured[a[chosen]]] = np.stack([dy[chosen], dx[chosen]], 1)
    for _ in range(passes):
        _try_neighbours_offsets(v, rows, cols, best, offset)
    return best, offset


def _try_neighbours_offsets(
    v: np.ndarray, rows: int, cols: int, best: np.ndarray, offset: np.ndarray
) -> None:
    """Each window takes a neighbour's offset where it brings a nearer window (in place)."""
    ys, xs = np.divmod(np.arange(len(v)), cols)
    for sy, sx in NEIGHBOURS:
        ny, nx = ys + sy, xs + sx
        inside = np.flatnonzero((ny >= 0) & (ny < rows) & (nx >= 0) & (nx < cols))
        tried = offset[ny[inside] * cols + nx[inside]]
        ty, tx = ys[inside] + tried[:, 0], xs[inside] + tried[:, 1]
        ok = (tried[:, 0] != NONE) & (ty >= 0) & (ty < rows) & (tx >= 0) & (tx < cols)
        window, tried, target = inside[ok], tried[ok], (ty * cols + tx)[ok]
        distance = ((v[window] - v[target]) ** 2).sum(1)
        nearer = distance < best[window]
        best[window[nearer]] = distance[nearer]
        offset[window[nearer]] = tried[nearer]


def copied_windows(
    v: np.ndarray, rows: int, cols: int, best: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    """(rows, cols) bool: textured windows whose nearest window is within TAU of their energy
    and whose 4 neighbours' nearest windows lie at the same offset."""
    energy = (v**2).sum(1)
    near = ((best <= TAU * energy) & (energy >= MIN_STD**2 * v.shape[1])).reshape(rows, cols)
    offsets = offset.reshape(rows, cols, 2)
    copied = np.zeros_like(near)
    inner = near[1:-1, 1:-1].copy()
    for sy, sx in NEIGHBOURS:
        around = (slice(1 + sy, rows - 1 + sy), slice(1 + sx, cols - 1 + sx))
        inner &= near[around] & (offsets[around] == offsets[1:-1, 1:-1]).all(-1)
    copied[1:-1, 1:-1] = inner
    return copied


def copied_share(image: np.ndarray, search: str) -> float:
    """The share of an RGB uint8 image's windows counted as copied, by ``search`` (``exact``: the
    pipeline's own share of pixels in exact copies, for comparison)."""
    if search == "exact":
        return float(duplicate_map(image).mean())
    v, rows, cols = window_vectors(image)
    if search == "exhaustive":
        best, offset = exhaustive_matches(v, cols)
    else:
        best, offset = hashed_matches(v, rows, cols)
    return float(copied_windows(v, rows, cols, best, offset).mean())


def batched_shares(images: list[np.ndarray]) -> np.ndarray:
    """Each image's share of near-copy windows by the pipeline's search, in passes of as many
    images as the extractor puts through its backbone at once on a CPU."""
    size = max(1, CPU_PASS_PIXELS // (images[0].shape[0] * images[0].shape[1]))
    maps = [near_copy_maps(as_batch(images[i : i + size])) for i in range(0, len(images), size)]
    return torch.cat(maps).flatten(1).mean(1).numpy()


def training_images(root: Path, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` real and ``count`` exemplar-filled training images of the newest split."""
    manifests = sorted(root.glob("split/*/manifest.parquet"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise SystemExit(f"no split under {root}: run python flows/main.py first")
    frame = pd.read_parquet(manifests[-1])
    train = frame[frame["split"] == "train"]
    reals = train[train["label"] == 0]
    fills = train[(train["label"] == 1) & (train["method"] == "exemplar")]
    chosen = pd.concat([part.sample(min(count, len(part)), random_state=1)
                        for part in (reals, fills)])  # fmt: skip
    images = [np.asarray(Image.open(root / uri).convert("RGB")) for uri in chosen["uri"]]
    return images, chosen["label"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, default=Path("storage"), help="local storage root")
    parser.add_argument("--images", type=int, default=30, help="real and exemplar images each")
    parser.add_argument("--exhaustive", action="store_true", help="also the brute-force search")
    parser.add_argument("--results", type=Path, default=None, help="where the JSON goes")
    args = parser.parse_args()
    images, labels = training_images(args.storage, args.images)
    rows: list[dict[str, Any]] = []
    for search in ["exact", "hashed", "batched", *(["exhaustive"] if args.exhaustive else [])]:
        for condition, degrade in CONDITIONS.items():
            degraded = [degrade(image) for image in images]
            start = time.perf_counter()
            if search == "batched":  # the pipeline's, in the extractor's passes
                shares = batched_shares(degraded)
            else:
                shares = np.array([copied_share(image, search) for image in degraded])
            seconds = (time.perf_counter() - start) / len(images)
            rows.append({
                "search": search, "condition": condition,
                "roc_auc": round(float(roc_auc_score(labels, shares)), 3),
                "mean_share_real": round(float(shares[labels == 0].mean()), 4),
                "mean_share_exemplar": round(float(shares[labels == 1].mean()), 4),
                "ms_per_image": round(1000 * seconds, 1),
            })  # fmt: skip
            print(" ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    # Rows of searches not run this time (the exhaustive one takes minutes) are kept.
    kept = (args.results or RESULTS) / "near_copies.json"
    ran = {row["search"] for row in rows}
    earlier = json.loads(kept.read_text())["rows"] if kept.exists() else []
    rows = [row for row in earlier if row["search"] not in ran] + rows
    result = {"real_images": int((labels == 0).sum()), "exemplar_images": int(labels.sum()),
              "window": WINDOW, "min_offset": MIN_OFFSET, "tau": TAU, "rows": rows}  # fmt: skip
    save("near_copies", result, args.results)


if __name__ == "__main__":
    main()
