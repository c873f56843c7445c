"""The feature extractor: a backbone of the registry turned into cell features (the CNN's
multi-scale maps and the forensic maps, pooled over cells of a few pixels), at native resolution
or resized, in float32 or a faster precision; with batch norms folded into the convolutions for
inference."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from deepfake.detector.bundle import WEIGHTS_FILE  # the name the bundle gives the file too
from deepfake.devices import keep_freed_memory, resolve_device
from deepfake.features.backbones import Backbone, get_backbone
from deepfake.features.forensics import FORENSIC_CHANNELS, as_batch, forensic_cells
from deepfake.features.near_copies import NEAR_COPY_CHANNELS, near_copy_cells
from deepfake.features.same_padding import without_same_padding

log = logging.getLogger("deepfake")

# Pixels a pass through the backbone on a CPU (16 images of 128 x 128): see pass_size.
CPU_PASS_PIXELS = 16 * 128 * 128


def resolve_precision(name: str, device: torch.device) -> str:
    """A concrete compute precision for ``auto``: bfloat16 where the device computes it natively
    (CUDA GPUs from Ampere on; CPUs with AVX512-BF16 or AMX), float16 on older GPUs, float32
    elsewhere (emulated bfloat16 is slower than float32)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    native = [getattr(torch.cpu, f, lambda: False)() for f in
              ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]  # fmt: skip
    return "bfloat16" if any(native) else "float32"


def read_weights(data: bytes, name: str = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes; anything else (a pickle, say) is refused unread."""
    try:
        return load_safetensors(data)
    except Exception as exc:  # safetensors parses a header and raw tensors, never code
        raise ValueError(f"{name}: not a safetensors file ({type(exc).__name__})") from None


class FeatureExtractor:
    """Turns RGB uint8 images into cell features: the image is cut into cells of ``cell`` pixels
    (of the backbone's input), and each cell gets the spatial mean of every backbone stage's
    feature map over it (the early stages keep the fine texture that inpainting disturbs, the late
    ones the content around it) and the forensic statistics of ``forensics``. Also the image's
    multi-scale vector (every stage's mean, concatenated), which fine-tuning trains on."""

    def __init__(
        self,
        backbone: str,
        input_size: int | None = None,
        device: str = "auto",
        cell: int = 8,
        weights: dict[str, torch.Tensor] | None = None,
        precision: str = "float32",
        relative_stages: int = 0,
        near_copies: bool = False,
    ) -> None:
        self.spec: Backbone = get_backbone(backbone)
        self.input_size, self.cell = input_size, cell
        self.relative_stages = min(relative_stages, len(self.spec.stage_channels))
        self.near_copies = near_copies
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.model = self.spec.build().eval()
        if weights is not None:
            self.model.load_state_dict(weights)
        if self.device.type == "cuda":
            # Every batch has the same shape: let cuDNN time its algorithms once and keep the best.
            torch.backends.cudnn.benchmark = True
        # Channels-last lets oneDNN and cuDNN pick their fastest convolutions.
        self.model.to(self.device, memory_format=torch.channels_last)
        self._inference: torch.nn.Module | None = None
        self._bilinear: dict[tuple[int, int], torch.Tensor] = {}
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_info(
        cls,
        info: dict[str, Any],
        weights: dict[str, torch.Tensor] | None = None,
        device: str = "auto",
    ) -> FeatureExtractor:
        """The extractor that ``info()`` describes (with its fine-tuned ``weights``, read with
        ``read_weights``, if any). A device without native support for the recorded precision
        computes in float32."""
        precision = info.get("precision", "float32")
        if resolve_precision("auto", resolve_device(device)) == "float32":
            precision = "float32"
        return cls(info["backbone"], info.get("input_size"), device, cell=info["cell"],
                   weights=weights, precision=precision,
                   relative_stages=info.get("relative_stages", 0),
                   near_copies=info.get("near_copies", False))  # fmt: skip

    def info(self) -> dict[str, Any]:
        return {
            "backbone": self.spec.name,
            "input_size": self.input_size,
            "cell": self.cell,
            "precision": self.precision,
            "relative_stages": self.relative_stages,
            "near_copies": self.near_copies,
            "cell_dim": self.cell_dim,
            "cell_channels": {
                "cnn": sum(self.spec.stage_channels),
                "cnn_vs_image": self.relative_dim,
                "near_copies": list(NEAR_COPY_CHANNELS if self.near_copies else ()),
                "forensic": list(FORENSIC_CHANNELS),
            },  # fmt: skip
        }

    @property
    def dim(self) -> int:
        """Length of the image's multi-scale vector."""
        return sum(self.spec.stage_channels)

    @property
    def relative_dim(self) -> int:
        """Channels that are also given against the image's own median cell."""
        return sum(self.spec.stage_channels[: self.relative_stages])

    @property
    def cell_dim(self) -> int:
        near = len(NEAR_COPY_CHANNELS) if self.near_copies else 0
        return self.dim + self.relative_dim + near + len(FORENSIC_CHANNELS)

    def pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 arrays of one size -> (n, 3, H, W) float pixel values 0-255 on the
        device."""
        return as_batch(torch.from_numpy(np.stack(images)).to(self.device))

    def preprocess(
        self, images: list[np.ndarray], pixels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """uint8 HxWx3 arrays of one size (or their ``pixels``) -> a normalised float batch on
        the device."""
        batch = (self.pixels(images) if pixels is None else pixels) / 255.0
        if self.input_size is not None and batch.shape[-2:] != (self.input_size,) * 2:
            batch = F.interpolate(
                batch,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        batch = (batch - self._mean) / self._std
        return batch.contiguous(memory_format=torch.channels_last)

    def _maps(
        self, model: torch.nn.Module, x: torch.Tensor, precision: str | None = None
    ) -> list[torch.Tensor]:
        precision = precision or self.precision
        with torch.autocast(
            self.device.type, dtype=getattr(torch, precision), enabled=precision != "float32"
        ):
            return [fmap.float() for fmap in self.spec.stages(model, x)]

    def inference_model(self, example: torch.Tensor) -> torch.nn.Module:
        """The backbone with its batch norms folded into the convolutions (about 1.7x faster on
        a CPU) and TensorFlow's "SAME" padding without padding copies (``same_padding``), made
        once; the model as built if either would change its outputs."""
        if self._inference is None:
            folded = without_same_padding(fold_batchnorm(copy.deepcopy(self.model).eval()))
            with torch.inference_mode():  # the same function, checked in full precision
                want = torch.cat(
                    [m.mean((2, 3)) for m in self._maps(self.model, example, "float32")], 1
                )
                got = torch.cat([m.mean((2, 3)) for m in self._maps(folded, example, "float32")], 1)
            close = torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
            if not close:
                log.warning("features: %s's inference copy (batch norms folded, static SAME "
                            "padding) changed its outputs; using the model as built",
                            self.spec.name)  # fmt: skip
            self._inference = folded if close else self.model
        return self._inference

    def trained(self) -> None:
        """Call after changing the backbone's weights: the folded copy is made again."""
        self._inference = None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(n, dim) multi-scale vectors of a preprocessed batch, differentiable (the trainable
        backbone): what fine-tuning an image head trains on."""
        return torch.cat([m.mean((2, 3)) for m in self._maps(self.model, x)], 1)

    def embed_cells(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(n, dim, rows, columns): the backbone's part of each cell's features, differentiable:
        what fine-tuning a cell head trains on."""
        return torch.cat(self.pool(self._maps(self.model, x), grid), 1)

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the backbone sees for an image this size."""
        return (self.input_size,) * 2 if self.input_size else (height, width)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of cells of an image this size."""
        side_h, side_w = self.input_shape(height, width)
        return max(1, side_h // self.cell), max(1, side_w // self.cell)

    def _cell_maps(self, images: list[np.ndarray], coarse: bool = False) -> list[torch.Tensor]:
        """The (n, channels, rows, columns) maps whose channels, in order, make a cell's
        features; with ``coarse``, a stage coarser than the cells (unless it is also given
        against the image's median) is left as it is, for ``at_cells`` to interpolate at chosen
        cells only."""
        pixels = self.pixels(images)
        x = self.preprocess(images, pixels)
        grid = self.grid(*images[0].shape[:2])
        maps = self._maps(self.inference_model(x[:1]), x)
        relative = self.relative_stages
        pooled = self.pool(maps[:relative], grid) + self.pool(maps[relative:], grid, not coarse)
        for stage in pooled[:relative]:
            # The fine texture of a cell against the image's own (its median cell): what an
            # edit changes locally, and what JPEG or resizing, acting on the whole image, do not.
            median = stage.flatten(2).median(dim=2).values
            pooled.append(stage - median[..., None, None])
        if self.near_copies:
            pooled.append(near_copy_cells(pixels, grid))
        pooled.append(forensic_cells(pixels, grid))
        return pooled

    def channel_index(self, name: str) -> int:
        """Where a named near-copy or forensic channel sits in a cell's features (they come
        last, in the order ``_cell_maps`` appends them)."""
        named = [*(NEAR_COPY_CHANNELS if self.near_copies else ()), *FORENSIC_CHANNELS]
        return self.cell_dim - len(named) + named.index(name)

    @staticmethod
    def pool(
        maps: list[torch.Tensor], grid: tuple[int, int], interpolate: bool = True
    ) -> list[torch.Tensor]:
        """Each stage's map averaged over the cells of a (rows, columns) grid; a late stage
        coarser than the cells gives its value at each cell's centre (unless not
        ``interpolate``: then it is left as it is)."""
        pooled = []
        for fmap in maps:
            if fmap.shape[-2] >= grid[0] and fmap.shape[-1] >= grid[1]:
                pooled.append(F.adaptive_avg_pool2d(fmap, grid))
            elif interpolate:
                pooled.append(F.interpolate(fmap, size=grid, mode="bilinear",
                                            align_corners=False))  # fmt: skip
            else:
                pooled.append(fmap)
        return pooled

    def at_cells(
        self, fmap: torch.Tensor, grid: tuple[int, int], keep: list[np.ndarray]
    ) -> torch.Tensor:
        """(sum of len(keep), channels): a stage map coarser than the cells, interpolated as
        ``pool`` does, at only the cells ``keep`` names (per image): ResNet-50's last two
        stages interpolated to every cell took 3 % of its features stage, to keep 24 of 256."""
        rows, cols = (
            self._bilinear_weights(fmap.shape[-2], grid[0]),
            self._bilinear_weights(fmap.shape[-1], grid[1]),
        )
        flat = fmap.permute(0, 2, 3, 1).reshape(len(fmap), -1, fmap.shape[1])
        out = []
        for i, k in enumerate(keep):
            cell = torch.from_numpy(np.asarray(k, np.int64)).to(self.device)
            # Bilinear weights are a row weight times a column weight: (cells, map pixels).
            weights = rows[cell // grid[1], :, None] * cols[cell % grid[1], None, :]
            out.append(weights.flatten(1) @ flat[i])
        return torch.cat(out)

    def _bilinear_weights(self, side: int, cells: int) -> torch.Tensor:
        """(cells, side): ``pool``'s bilinear weights from a map's ``side`` pixels to ``cells``
        cell centres along one axis (interpolating each pixel alone, by torch itself)."""
        if (side, cells) not in self._bilinear:
            eye = torch.eye(side, device=self.device).view(side, 1, side, 1)
            along = F.interpolate(eye, size=(cells, 1), mode="bilinear", align_corners=False)
            self._bilinear[side, cells] = along[:, 0, :, 0].T.contiguous()
        return self._bilinear[side, cells]

    def pass_size(self, height: int, width: int) -> int:
        """Images of this size per pass through the backbone. On a CPU, passes of at most
        ``CPU_PASS_PIXELS``: a larger pass's activations (ResNet-50's or Lite0's early maps, 100
        MB and more at 64 images of 128 px) exceed glibc's mmap threshold, so each is mapped and
        zero-filled afresh on every pass: Lite0's backbone ran about 1.5x faster in passes of
        16 images than of 64 (README "Performance"). A GPU takes the batch whole."""
        if self.device.type != "cpu":
            return 1 << 30
        side_h, side_w = self.input_shape(height, width)
        return max(1, CPU_PASS_PIXELS // (side_h * side_w))

    def _passes(
        self, images: list[np.ndarray], coarse: bool = False
    ) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """(first image's index, ``_cell_maps``) of consecutive passes over ``images``."""
        size = self.pass_size(*images[0].shape[:2])
        for start in range(0, len(images), size):
            yield start, self._cell_maps(images[start : start + size], coarse)

    @torch.inference_mode()
    def cells(self, images: list[np.ndarray]) -> np.ndarray:
        """(n, rows, columns, cell_dim) float32 cell features of images of one size."""
        if not images:
            return np.zeros((0, 1, 1, self.cell_dim), np.float32)
        return np.concatenate([
            torch.cat(maps, 1).permute(0, 2, 3, 1).float().cpu().numpy()
            for _, maps in self._passes(images)
        ])  # fmt: skip

    @torch.inference_mode()
    def chosen_cells(
        self, images: list[np.ndarray], keep: list[np.ndarray], dtype: torch.dtype = torch.float32
    ) -> list[np.ndarray]:
        """The features of only the cells ``keep`` names (per image, indices into its flattened
        grid): (len(keep[i]), cell_dim) each, the same values as ``cells`` gives them (rounded to
        ``dtype``), without gathering every cell of a wide backbone (ResNet-50: 3,846 numbers a
        cell). Rounding here rather than in numpy: torch's float16 conversion is vectorised,
        numpy's took 0.3 s for ResNet-50's 600 images' cells."""
        out: list[np.ndarray] = []
        grid = self.grid(*images[0].shape[:2]) if images else (1, 1)
        for start, maps in self._passes(images, coarse=True) if images else ():
            chunk = keep[start : start + len(maps[0])]
            flat = np.concatenate([np.asarray(k, np.int64) + i * grid[0] * grid[1]
                                   for i, k in enumerate(chunk)])  # fmt: skip
            rows = torch.from_numpy(flat).to(self.device)
            # Cell by cell, channels last: a view of the channels-last maps, so gathering copies
            # only the chosen cells.
            chosen = torch.cat([
                m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]).index_select(0, rows)
                if m.shape[-2:] == grid else self.at_cells(m, grid, chunk)
                for m in maps
            ], 1)  # fmt: skip
            out += np.split(chosen.to(dtype).cpu().numpy(), np.cumsum([len(k) for k in chunk])[:-1])
        return out

    @torch.inference_mode()
    def project(self, images: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
        """(n, rows * columns, models) float32: every cell's features times ``weights``
        (cell_dim, models), computed on the device map by map, so that no cell's features are
        gathered or leave the device (linear models score every cell of an image this way)."""
        if weights.shape[0] != self.cell_dim:
            raise ValueError(f"weights for {weights.shape[0]} features a cell; "
                             f"{self.spec.name}'s cells have {self.cell_dim}")  # fmt: skip
        if not images:
            return np.zeros((0, 1, weights.shape[1]), np.float32)
        w = torch.from_numpy(np.ascontiguousarray(weights, np.float32)).to(self.device)
        scores = []
        for _, maps in self._passes(images):
            out, start, n = None, 0, len(maps[0])
            for m in maps:
                channels = m.shape[1]
                part = m.permute(0, 2, 3, 1).reshape(n, -1, channels) @ w[start : start + channels]
                out = part if out is None else out.add_(part)
                start += channels
            scores.append(out.cpu().numpy())
        return np.concatenate(scores)

    @torch.inference_mode()
    def transform(self, images: list[np.ndarray]) -> np.ndarray:
        """(n, dim) multi-scale vectors of images of one size."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self.preprocess(images)
        maps = self._maps(self.inference_model(x[:1]), x)
        return torch.cat([m.mean((2, 3)) for m in maps], 1).cpu().numpy()

    def weights_bytes(self) -> bytes:
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return save_safetensors(state)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every inference-mode batch norm that directly follows a convolution into that
    convolution's weights and bias (in place), leaving only its activation: the same function
    with one layer less to run. Relies on a module listing each norm right after its
    convolution, as timm's and torchvision's blocks do; callers check the outputs agree."""
    for module in list(model.modules()):
        children = list(module.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:], strict=False):
            foldable = (
                isinstance(conv, nn.Conv2d)
                and isinstance(norm, nn.BatchNorm2d)
                and not norm.training
                and norm.track_running_stats
                and norm.num_features == conv.out_channels
            )
            if not foldable:
                continue
            with torch.no_grad():
                gamma = norm.weight if norm.affine else torch.ones_like(norm.running_var)
                beta = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
                scale = gamma / torch.sqrt(norm.running_var + norm.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias = nn.Parameter((bias - norm.running_mean) * scale + beta)
            # timm's BatchNormAct2d applies dropout and an activation after normalising.
            after = [getattr(norm, a) for a in ("drop", "act") if hasattr(norm, a)]
            setattr(module, name, nn.Sequential(*after) if after else nn.Identity())
    return model
