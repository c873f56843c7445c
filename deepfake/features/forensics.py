"""Forensic maps that need no training, pooled over the detector's cells.

- **Copies**: a region filled by copying patches (exemplar inpainting, content-aware fill) is made
  of exact copies of pixels found elsewhere in the same image; a natural photo almost never
  repeats a textured patch exactly. ``duplicate_maps`` marks the pixels covered by a small,
  textured patch that also appears, unchanged, at least ``min_offset`` pixels away.
- **Noise and texture**: a fill is smoother than the camera noise and texture around it, whatever
  made it. ``residual_energy`` is the size of the image's second derivative, the finest band,
  where that noise lives; ``band_energy`` the size of the next band (a difference of Gaussians),
  which survives JPEG and resizing better.

``forensic_cells`` pools them over a grid of cells, the residual and the band also relative to
the image's own median (a smooth cell in a textured image is the anomaly, not a smooth image).

Everything runs on a whole batch at once, in torch, on the extractor's device: the copy search
hashes every window with a convolution and finds equal hashes by sorting, instead of a search per
image. The grey image is OpenCV's (the same integer weights), the Laplacian and the Gaussians
OpenCV's kernels and borders, so the maps are what ``cv2`` would give.

Exact copies do not survive JPEG. A copy search that tolerates JPEG's changes (near-duplicates
of 4x4 and 8x8 windows within JPEG-noise distance) was measured on the sample tiles and not kept:
at any tolerance that still finds JPEG-compressed copies, real images' own textures hold more
near-duplicates than exemplar fills do. One that also asks a patch's windows to share their
offset does separate them after JPEG: ``near_copies`` (``features.near_copies``, off by
default: measured in README "Results on the offline default").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FORENSIC_CHANNELS = ("copies_mean", "copies_max", "residual", "residual_vs_image", "band",
                     "band_vs_image")  # fmt: skip

# A window's key: four hashes, each the sum over the window of its bytes times random weights below
# 2**10, so that a hash stays an exact integer below 2**24 in float32 whatever the order of the
# sums (the fast convolutions on a CPU or a GPU work in float32). Each catches a difference
# between two windows but for a chance of 2**-10; the four together, 2**-40.
_HASHES = 4
_HASH_BITS = 10
# The four hashes are folded into 48 bits, of which the search keeps as many as the window's
# index leaves of 62 (all 48 up to 2**14 windows, an image of 131 x 131; 40 at 2048 x 2048, near
# the hashes' own limit); the index below them makes a plain sort of the keys put equal windows
# side by side in the windows' order, with no order to track.
_KEY_BITS = 62


def _hash_weights(patch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(20261206)
    shape = (_HASHES, 3, patch, patch)
    weights = torch.randint(1, 2**_HASH_BITS, shape, generator=generator, dtype=torch.int64)
    return weights.to(device=device, dtype=torch.float32)


def as_batch(images: torch.Tensor | np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """(n, 3, H, W) float32 pixel values 0-255 from RGB uint8 images (n, H, W, 3)."""
    if isinstance(images, list):
        images = np.stack(images)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    return images.permute(0, 3, 1, 2).float().contiguous()


def grey(batch: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) OpenCV's RGB-to-grey of uint8 pixels (its fixed-point weights, rounded)."""
    r, g, b = (batch[:, i : i + 1].to(torch.int32) for i in range(3))
    return ((r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15).float()


def _per_image(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each channel of each image of ``x`` (n, c, H, W) convolved with its channel's 2-D
    ``kernel`` (c, kh, kw), as one depthwise convolution (many times faster on a CPU than a
    convolution that mixes channels); no padding."""
    n, c, height, width = x.shape
    weight = kernel.to(x.dtype).repeat(n, 1, 1).unsqueeze(1)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # sums of integers: exact
        out = F.conv2d(x.reshape(1, n * c, height, width), weight, groups=n * c)
    return out.view(n, c, *out.shape[-2:])


def _window_sums(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, H', W') sums of ``x`` (n, c, H, W) over every window of ``size``, channels added
    (exact for integer values while the sums stay below 2**24)."""
    return _per_image(x.sum(1, keepdim=True), x.new_ones(1, *size))[:, 0]


def _textured(batch: torch.Tensor, patch: int, min_std: float, min_gradient: float) -> torch.Tensor:
    """(n, rows, cols) bool: windows with pixel std above ``min_std`` and a mean absolute step
    above ``min_gradient`` both down and across (a straight edge between flat areas is no
    texture: every window along it is the same)."""
    count = 3 * patch * patch
    s1 = _window_sums(batch, (patch, patch)).to(torch.int64)
    s2 = _window_sums(batch * batch, (patch, patch)).to(torch.int64)
    spread = count * s2 - s1 * s1  # count**2 * variance, exact
    down = _window_sums((batch[:, :, 1:] - batch[:, :, :-1]).abs(), (patch - 1, patch))
    across = _window_sums((batch[..., 1:] - batch[..., :-1]).abs(), (patch, patch - 1))
    steps = 3 * (patch - 1) * patch
    return (
        (spread > min_std**2 * count**2)
        & (down > min_gradient * steps)
        & (across > min_gradient * steps)
    )


def _window_keys(batch: torch.Tensor, patch: int) -> torch.Tensor:
    """(n, rows, cols) int64: a 48-bit key of every window's pixels; equal windows, equal keys."""
    weights = _hash_weights(patch, batch.device)
    hashes = [_per_image(batch, weights[j]).sum(1).to(torch.int64) for j in range(_HASHES)]
    h0, h1, h2, h3 = hashes
    return (h0 | (h1 << 24)) ^ (h2 << 12) ^ (h3 << 24)


def _sort_rows(keys: torch.Tensor) -> torch.Tensor:
    """Each row of ``keys`` (int64) sorted. On a CPU numpy's sort takes a quarter of torch's
    time (which also tracks the order); the tensors share memory, nothing is copied."""
    if keys.device.type != "cpu":
        return torch.sort(keys, dim=1).values
    return torch.from_numpy(np.sort(keys.numpy(), axis=1))


def duplicate_maps(
    batch: torch.Tensor,
    patch: int = 4,
    min_std: float = 3.0,
    min_gradient: float = 0.5,
    min_offset: int = 8,
) -> torch.Tensor:
    """(n, H, W) float32: 1.0 where the pixel lies in a textured ``patch`` x ``patch`` window
    whose exact pixels also occur at least ``min_offset`` pixels away in the same image (see
    ``_textured``), else 0.0. ``batch`` is ``as_batch``'s (n, 3, H, W)."""
    n, _, height, width = batch.shape
    rows, cols = height - patch + 1, width - patch + 1
    size = rows * cols
    textured = _textured(batch, patch, min_std, min_gradient).view(n, size)
    index_bits = max(1, (size - 1).bit_length())
    index = torch.arange(size, device=batch.device).expand(n, size)
    hashes = _window_keys(batch, patch).view(n, size) & ((1 << (_KEY_BITS - index_bits)) - 1)
    # Windows that are not textured never match: each gets a key of its own, sorted last.
    own = (1 << _KEY_BITS) | (index << index_bits)
    keys = _sort_rows(torch.where(textured, hashes << index_bits, own) | index)
    # Equal windows side by side, image by image, in the windows' order: row by row, a group's
    # first and last windows are its top and bottom ones.
    keys, order = keys >> index_bits, keys & ((1 << index_bits) - 1)
    same = keys[:, 1:] == keys[:, :-1]
    shared = torch.zeros_like(keys, dtype=torch.bool)
    shared[:, 1:] |= same
    shared[:, :-1] |= same
    # Only windows whose key another window shares can be copies: few, in most images.
    image, position = shared.nonzero(as_tuple=True)
    copied = torch.zeros(n, size, device=batch.device)
    if len(position):
        key, window = keys[image, position], order[image, position]
        new = torch.ones_like(key, dtype=torch.bool)
        new[1:] = (key[1:] != key[:-1]) | (image[1:] != image[:-1])
        group = torch.cumsum(new, 0) - 1
        ys, xs = window // cols, window % cols
        last = torch.ones_like(new)
        last[:-1] = new[1:]
        tall = ys[last] - ys[new]
        groups = len(tall)
        wide = xs.new_full((groups,), -1).scatter_reduce(0, group, xs, "amax") - xs.new_full(
            (groups,), cols
        ).scatter_reduce(0, group, xs, "amin")
        far = tall**2 + wide**2 >= min_offset**2  # not just a patch and its shifted neighbour
        copied[image, window] = far[group].float()
    # A pixel is covered when any window containing it was copied.
    hits = F.pad(copied.view(n, 1, rows, cols), (patch - 1,) * 4)
    return _per_image(hits, hits.new_ones(1, patch, patch))[:, 0].clamp_(max=1.0)


def duplicate_map(image: np.ndarray, **kwargs: int | float) -> np.ndarray:
    """``duplicate_maps`` of one RGB uint8 image (H, W, 3), as a float32 numpy array."""
    return duplicate_maps(as_batch([image]), **kwargs)[0].numpy()


def _reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
    """OpenCV's default border (reflect-101), even where ``pad`` exceeds the image."""
    while pad > 0:
        step = min(pad, x.shape[-1] - 1, x.shape[-2] - 1)
        x = F.pad(x, (step,) * 4, mode="reflect")
        pad -= step
    return x


def residual_energy(grey_batch: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) |Laplacian| of grey images (OpenCV's 3x3 kernel): fine texture and noise."""
    kernel = torch.tensor([[[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]], device=grey_batch.device)
    return _per_image(_reflect(grey_batch, 1), kernel).abs()


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """OpenCV's GaussianBlur of float images (kernel side round(8 sigma + 1), odd)."""
    side = int(round(sigma * 8 + 1)) | 1
    t = torch.arange(side, device=x.device, dtype=torch.float64) - (side - 1) / 2
    kernel = torch.exp(-(t * t) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).float()
    x = _per_image(_reflect(x, side // 2), kernel.view(1, 1, side))
    return _per_image(x, kernel.view(1, side, 1))


def band_energy(grey_batch: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) |difference of Gaussians (sigma 1 and 2.5)| of grey images: the texture one
    band coarser than ``residual_energy``."""
    return (_gaussian(grey_batch, 1.0) - _gaussian(grey_batch, 2.5)).abs()


def _pool(maps: torch.Tensor, grid: tuple[int, int], how: str = "mean") -> torch.Tensor:
    """(n, 1, H, W) -> (n, rows, columns): the mean (or max) over each cell of the grid."""
    rows, cols = grid
    size = (maps.shape[-2] // rows, maps.shape[-1] // cols)
    cropped = maps[..., : rows * size[0], : cols * size[1]]
    pooled = F.max_pool2d(cropped, size) if how == "max" else F.avg_pool2d(cropped, size)
    return pooled[:, 0]


def pool_cells(values: np.ndarray, grid: tuple[int, int], how: str = "mean") -> np.ndarray:
    """The mean (or max) of a HxW numpy map over each cell of a (rows, columns) grid."""
    gh, gw = grid
    h, w = values.shape
    cells = values[: gh * (h // gh), : gw * (w // gw)].reshape(gh, h // gh, gw, w // gw)
    return cells.max((1, 3)) if how == "max" else cells.mean((1, 3))


def _vs_image(cells: torch.Tensor) -> torch.Tensor:
    """Each cell against its image's median cell (numpy's median: the middle pair's mean)."""
    median = torch.quantile(cells.flatten(1), 0.5, dim=1)
    return cells - median.view(-1, 1, 1)


def forensic_cells(batch: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(n, len(FORENSIC_CHANNELS), rows, columns) float32 for ``as_batch``'s (n, 3, H, W)."""
    copies = duplicate_maps(batch)[:, None]
    grey_batch = grey(batch)
    residual = torch.log1p(_pool(residual_energy(grey_batch), grid))
    band = torch.log1p(_pool(band_energy(grey_batch), grid))
    channels = [
        _pool(copies, grid),
        _pool(copies, grid, "max"),
        residual,
        _vs_image(residual),
        band,
        _vs_image(band),
    ]
    return torch.stack(channels, 1).float()
