"""The feature extractor: a backbone of the registry turned into image vectors, whole images or
crops, at native resolution or resized, in float32 or a faster precision; with batch norms folded
into the convolutions for inference."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from deepfake.devices import resolve_device
from deepfake.features.backbones import Backbone, get_backbone

log = logging.getLogger("deepfake")

WEIGHTS_FILE = "backbone.safetensors"


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


def crop_starts(side: int, crop: int) -> list[int]:
    """Offsets of evenly spaced crops of ``crop`` pixels covering ``side`` pixels (overlapping
    where ``side`` is not a multiple of ``crop``); one crop of the whole side when it is smaller."""
    if crop >= side:
        return [0]
    count = math.ceil(side / crop)
    return [round(i * (side - crop) / (count - 1)) for i in range(count)]


class FeatureExtractor:
    """Turns batches of RGB uint8 images into image vectors (float32, one row per image)."""

    def __init__(
        self,
        backbone: str,
        input_size: int | None = None,
        device: str = "auto",
        pooling: str = "multiscale",
        crop_size: int | None = None,
        weights: dict[str, torch.Tensor] | None = None,
        precision: str = "float32",
    ) -> None:
        if pooling not in ("multiscale", "last"):
            raise ValueError(f"unknown pooling {pooling!r}; choose multiscale or last")
        self.spec: Backbone = get_backbone(backbone)
        self.input_size, self.pooling, self.crop_size = input_size, pooling, crop_size
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = self.spec.build().eval()
        if weights is not None:
            self.model.load_state_dict(weights)
        # Channels-last lets oneDNN and cuDNN pick their fastest convolutions.
        self.model.to(self.device, memory_format=torch.channels_last)
        self._inference: torch.nn.Module | None = None
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
        return cls(
            info["backbone"],
            info.get("input_size"),
            device,
            pooling=info.get("pooling", "last"),
            crop_size=info.get("crop_size"),
            weights=weights,
            precision=precision,
        )

    def info(self) -> dict[str, Any]:
        return {
            "backbone": self.spec.name,
            "input_size": self.input_size,
            "pooling": self.pooling,
            "crop_size": self.crop_size,
            "precision": self.precision,
            "dim": self.dim,
            "aggregation": "mean and max over crops, concatenated" if self.crop_size else None,
        }

    @property
    def crop_dim(self) -> int:
        return sum(self.spec.stage_channels) if self.pooling == "multiscale" else self.spec.features

    @property
    def dim(self) -> int:
        return self.crop_dim * (2 if self.crop_size else 1)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 arrays of one size -> a normalised float batch on the device."""
        batch = torch.from_numpy(np.stack(images)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
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

    def crop_boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of every crop of an image this size, row by row."""
        if self.crop_size is None:
            return [(0, 0, height, width)]
        c = self.crop_size
        return [
            (top, left, min(c, height), min(c, width))
            for top in crop_starts(height, c)
            for left in crop_starts(width, c)
        ]

    def _pool(
        self, model: torch.nn.Module, x: torch.Tensor, precision: str | None = None
    ) -> torch.Tensor:
        precision = precision or self.precision
        with torch.autocast(
            self.device.type, dtype=getattr(torch, precision), enabled=precision != "float32"
        ):
            if self.pooling == "last":
                return model(x).float()
            maps = self.spec.stages(model, x)
            return torch.cat([fmap.float().mean(dim=(2, 3)) for fmap in maps], 1)

    def inference_model(self, example: torch.Tensor) -> torch.nn.Module:
        """The backbone with its batch norms folded into the convolutions (about 1.7x faster on
        a CPU), made once; the unfolded model if folding would change its outputs."""
        if self._inference is None:
            folded = fold_batchnorm(copy.deepcopy(self.model).eval())
            with torch.inference_mode():  # the same function, checked in full precision
                want = self._pool(self.model, example, "float32")
                got = self._pool(folded, example, "float32")
            close = torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
            if not close:
                log.warning("features: folding batch norms changed %s's outputs; not folded",
                            self.spec.name)  # fmt: skip
            self._inference = folded if close else self.model
        return self._inference

    def trained(self) -> None:
        """Call after changing the backbone's weights: the folded copy is made again."""
        self._inference = None

    def embed_crops(self, x: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        """(n, crops, crop_dim) vectors of a preprocessed batch (differentiable with the
        default ``model``, the trainable backbone)."""
        n, _, height, width = x.shape
        boxes = self.crop_boxes(height, width)
        crops = torch.stack([x[:, :, t : t + h, s : s + w] for t, s, h, w in boxes], 1)
        vectors = self._pool(model or self.model, crops.flatten(0, 1))
        return vectors.view(n, len(boxes), -1)

    def aggregate(self, crops: torch.Tensor) -> torch.Tensor:
        """(n, crops, crop_dim) -> (n, dim) image vectors."""
        if self.crop_size is None:
            return crops[:, 0]
        return torch.cat([crops.mean(1), crops.amax(1)], 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.embed_crops(x))

    @torch.inference_mode()
    def transform(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self.preprocess(images)
        model = self.inference_model(x[:1])
        return self.aggregate(self.embed_crops(x, model)).float().cpu().numpy()

    @torch.inference_mode()
    def transform_crops(self, image: np.ndarray) -> np.ndarray:
        """(crops, dim): each crop of one image as if it were a whole image of one crop (the
        vector a heat map scores)."""
        x = self.preprocess([image])
        crops = self.embed_crops(x, self.inference_model(x))[0]
        return self.aggregate(crops[:, None]).float().cpu().numpy()

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
