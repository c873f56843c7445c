"""Near-copies: copied patches found after JPEG or resampling changed their pixels.

``forensics.duplicate_maps`` finds exact copies, which JPEG and resampling destroy. Here a grey
4x4 window (its mean removed) counts as copied when its nearest window at least ``MIN_OFFSET``
pixels away is within ``TAU`` of its own energy, and its 4 neighbours' nearest windows lie at the
very same offset: a copied patch moves all its windows together, while a real texture's
near-matches scatter. The rule and its figures against an exhaustive search are in
``bench/near_copies.py`` (README "Results on the offline default").

The nearest windows come from hashing, batched in torch like ``duplicate_maps``: in each of
``TABLES`` tables every window is binned by 3 random projections and sorted by its bin (then by a
fourth projection), and each window is compared with the next ``IN_ORDER`` windows of its bin;
then each window also tries its 4 neighbours' offsets, so that a copy found anywhere in a patch
spreads over it. No per-image loop: the textured windows of a whole batch are hashed in one sorted
list (flat windows never pair), so a batch is a few sorts, gathers and sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepfake.features.forensics import _pool, _sort_rows, grey

WINDOW = 4
MIN_OFFSET = 8  # a window and its own shifted neighbours are not copies
MIN_STD = 3.0  # grey levels: flatter windows match anything
TAU = 0.2  # nearest window's squared distance over the window's own energy
TABLES = 6
IN_ORDER = 3  # each window is compared with this many next windows of its bin
BIN = 12.0  # grey levels of a projection per bin
NEIGHBOURS = ((0, 1), (0, -1), (1, 0), (-1, 0))
_SEED = 20261207
# A projection of a window is at most its norm, 255 * WINDOW (mean removed): bins fit in 8 bits
# once shifted by 128, and the fourth projection, in 1/8 grey levels, in 14.
_BIN_SHIFT, _ORDER_BITS = 128, 14
_BINS_BITS = 24  # the three bins of a window's key, 8 bits each
_NONE = torch.iinfo(torch.int64).max
_OFFSET_BITS = 12  # offsets of images up to 2048 px, each coordinate shifted by 2048


def _projections(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(_SEED)
    directions = torch.randn(TABLES, WINDOW * WINDOW, 4, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    return directions.to(device), torch.rand(TABLES, 3, generator=generator).to(device)


def _windows(batch: torch.Tensor) -> torch.Tensor:
    """(n, rows * cols, WINDOW**2) grey windows of ``as_batch``'s (n, 3, H, W), means removed."""
    v = F.unfold(grey(batch), WINDOW).transpose(1, 2)
    return v - v.mean(2, keepdim=True)


def _code(distance: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """A candidate as one int64 that orders by distance first (a non-negative float32 orders
    as its bits do), with its offset in the low bits."""
    offset = ((dy + (1 << _OFFSET_BITS - 1)) << _OFFSET_BITS) | (dx + (1 << _OFFSET_BITS - 1))
    return (distance.view(torch.int32).to(torch.int64) << 32) | offset


def _decode(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(distance, dy, dx) of ``_code``; a window with no candidate gets distance inf."""
    none = code == _NONE
    distance = (code >> 32).to(torch.int32).view(torch.float32).masked_fill(none, float("inf"))
    half, mask = 1 << _OFFSET_BITS - 1, (1 << _OFFSET_BITS) - 1
    return distance, ((code >> _OFFSET_BITS) & mask) - half, (code & mask) - half


def _squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row by row; squaring in place is several times faster on a CPU than ``** 2``."""
    difference = a - b
    return difference.mul_(difference).sum(1)


def nearest_windows(v: torch.Tensor, textured: torch.Tensor, cols: int) -> torch.Tensor:
    """Each textured window's nearest hashed candidate at least MIN_OFFSET away, as ``_code``
    (n, N) int64 (``_NONE``: none found)."""
    n, size, _ = v.shape
    index_bits = max(1, (size - 1).bit_length())
    # A sort key holds the image, the bins, the fourth projection and the window: images are
    # searched in groups small enough for it to fit in 63 bits.
    group = 1 << max(0, 63 - _BINS_BITS - _ORDER_BITS - index_bits)
    best = torch.full((n, size), _NONE, dtype=torch.int64, device=v.device)
    for first in range(0, n, group):
        last = min(n, first + group)
        _search(v[first:last], textured[first:last], cols, index_bits, best[first:last])
    return best


def _search(
    v: torch.Tensor, textured: torch.Tensor, cols: int, index_bits: int, best: torch.Tensor
) -> None:
    """``nearest_windows`` of images whose sort keys fit in 63 bits, into ``best`` (in place).
    Only textured windows are hashed, all images' in one sorted list: flat windows never pair,
    and about half of a painting's are flat."""
    size = v.shape[1]
    flat, best = v.reshape(-1, v.shape[2]), best.view(-1)
    chosen = textured.reshape(-1).nonzero().squeeze(1)
    chosen_image, chosen_window = chosen // size, chosen % size
    chosen_v = flat.index_select(0, chosen)
    directions, shifts = _projections(v.device)
    window_mask = (1 << index_bits) - 1
    for table in range(TABLES):
        projected = chosen_v @ directions[table]
        bins = (torch.floor(projected[:, :3] / BIN + shifts[table]).long() + _BIN_SHIFT).clamp(
            0, 255
        )
        key = (chosen_image << _BINS_BITS) | (bins[:, 0] << 16) | (bins[:, 1] << 8) | bins[:, 2]
        fourth = ((projected[:, 3] + 1024) * 8).long().clamp(0, (1 << _ORDER_BITS) - 1)
        packed = (((key << _ORDER_BITS) | fourth) << index_bits) | chosen_window
        packed = _sort_rows(packed[None])[0]
        window = packed & window_mask
        key = packed >> (_ORDER_BITS + index_bits)  # the image and the bins
        order = (key >> _BINS_BITS) * size + window
        in_order = flat.index_select(0, order)
        for step in range(1, IN_ORDER + 1):
            a, b = order[step:], order[:-step]
            dy = window[:-step] // cols - window[step:] // cols
            dx = window[:-step] % cols - window[step:] % cols
            pair = (key[step:] == key[:-step]) & (dy * dy + dx * dx >= MIN_OFFSET**2)
            distance = _squared_distance(in_order[step:], in_order[:-step])
            for at, sy, sx in ((a, dy, dx), (b, -dy, -dx)):
                code = torch.where(pair, _code(distance, sy, sx), _NONE)
                best.scatter_reduce_(0, at, code, "amin")


def _try_neighbours_offsets(v: torch.Tensor, best: torch.Tensor, rows: int, cols: int) -> None:
    """Each window takes a neighbour's offset where it brings a nearer window (in place). Only
    windows whose neighbour has a candidate are compared."""
    n, size, _ = v.shape
    flat, best_flat = v.reshape(-1, v.shape[2]), best.view(-1)
    window = torch.arange(size, device=v.device)
    ys, xs = window // cols, window % cols
    for sy, sx in NEIGHBOURS:
        ny, nx = ys + sy, xs + sx
        inside = (ny >= 0) & (ny < rows) & (nx >= 0) & (nx < cols)
        tried = best.index_select(1, torch.where(inside, ny * cols + nx, 0))
        _, dy, dx = _decode(tried)
        ty, tx = ys + dy, xs + dx
        ok = inside & (tried != _NONE) & (ty >= 0) & (ty < rows) & (tx >= 0) & (tx < cols)
        at = ok.view(-1).nonzero().squeeze(1)
        target = at - at % size + (ty * cols + tx).view(-1).index_select(0, at)
        distance = _squared_distance(flat.index_select(0, at), flat.index_select(0, target))
        code = _code(distance, dy.view(-1).index_select(0, at), dx.view(-1).index_select(0, at))
        best_flat.scatter_reduce_(0, at, code, "amin")


NEAR_COPY_CHANNELS = ("near_copies_mean", "near_copies_max")


def near_copy_maps(batch: torch.Tensor) -> torch.Tensor:
    """(n, H, W) float32: 1.0 at the centre pixel of each window counted as a near-copy (see the
    module's docstring), else 0.0. ``batch`` is ``forensics.as_batch``'s (n, 3, H, W). A window
    marks its centre, not every pixel it covers: covering inflates a real texture's few chance
    clusters as much as a copied patch (the share of windows separates 30 exemplar fills from 30
    real training images after JPEG 80 at ROC-AUC 0.78, the share of covered pixels at 0.74)."""
    n, _, height, width = batch.shape
    rows, cols = height - WINDOW + 1, width - WINDOW + 1
    v = _windows(batch)
    energy = (v * v).sum(2)
    textured = energy >= MIN_STD**2 * WINDOW * WINDOW
    best = nearest_windows(v, textured, cols)
    _try_neighbours_offsets(v, best, rows, cols)
    distance, dy, dx = _decode(best)
    near = ((distance <= TAU * energy) & textured).view(n, rows, cols)
    offset = (dy * (1 << _OFFSET_BITS) + dx).view(n, rows, cols)
    inner = near[:, 1:-1, 1:-1].clone()
    for sy, sx in NEIGHBOURS:
        around = (slice(None), slice(1 + sy, rows - 1 + sy), slice(1 + sx, cols - 1 + sx))
        inner &= near[around] & (offset[around] == offset[:, 1:-1, 1:-1])
    # Window (y, x) of the inner grid starts at pixel (y + 1, x + 1): its centre is 2 further.
    centre = WINDOW // 2
    pad = (1 + centre, width - (cols - 1) - centre, 1 + centre, height - (rows - 1) - centre)
    return F.pad(inner.float(), pad)


def near_copy_cells(batch: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(n, len(NEAR_COPY_CHANNELS), rows, columns): each cell's share of near-copy windows and
    whether it has any, for ``as_batch``'s (n, 3, H, W)."""
    maps = near_copy_maps(batch)[:, None]
    return torch.stack([_pool(maps, grid), _pool(maps, grid, "max")], 1).float()
