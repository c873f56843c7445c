"""A small learned fill: a convolutional encoder-decoder trained on the sources to fill masked
regions, the CPU-sized stand-in of the learned inpainting family (LaMa, the fills of diffusion
models). Its fills carry the traces every learned fill shares (an upsampling decoder, outputs
squashed through tanh) rather than those of a hand-written method.

It is trained once per inpainting stage, on random crops of the source images under random masks
of every family (masked L1 loss, heavier in the hole), and saved as safetensors in the stage's
folder; each batch loads it. Seeded: the same sources and seed give the same network on the same
machine.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from deepfake.hashing import seed_of
from deepfake.masks.shapes import MASK_TYPES, make_mask

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("deepfake")

WEIGHTS = "fillnet.safetensors"
CROP = 48
STEPS = 200
BATCH = 12


def build() -> nn.Module:
    """Encoder (two stride-2 convolutions), dilated middle, nearest-neighbour upsampling decoder;
    input: the coarsely filled image (3 channels) and the hole (1 channel); output: the
    correction to the coarse fill (before tanh)."""
    from torch import nn

    def block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation), nn.ELU()
        )

    return nn.Sequential(
        block(4, 24),
        block(24, 48, stride=2),
        block(48, 48, stride=2),
        block(48, 48, dilation=2),
        block(48, 48, dilation=4),
        nn.Upsample(scale_factor=2, mode="nearest"),
        block(48, 24),
        nn.Upsample(scale_factor=2, mode="nearest"),
        block(24, 24),
        nn.Conv2d(24, 3, 3, padding=1),
    )


def _coarse(images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """The images with their holes filled smoothly from the known pixels by push-pull (averages
    pulled down a pyramid, then pushed back up into the gaps): the first, coarse stage of a
    two-stage fill; the network adds the detail. Has no parameters: computed without grad."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        known = 1 - holes
        levels = [(images * known, known)]
        while levels[-1][1].shape[-1] > 1 and levels[-1][1].shape[-2] > 1:
            total, weight = levels[-1]
            levels.append((F.avg_pool2d(total, 2, ceil_mode=True),
                           F.avg_pool2d(weight, 2, ceil_mode=True)))  # fmt: skip
        total, weight = levels[-1]
        fill = total / weight.clamp_min(1e-6)
        for total, weight in reversed(levels[:-1]):
            up = F.interpolate(fill, size=total.shape[-2:], mode="bilinear", align_corners=False)
            fill = total + (1 - weight) * up
        return images * known + fill * holes


def _run(net: nn.Module, images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """The network's fill of images in [-1, 1] (n, 3, h, w) with holes (n, 1, h, w): the coarse
    fill plus the network's correction, squashed to [-1, 1]."""
    import torch

    coarse = _coarse(images, holes)
    return torch.tanh(torch.atanh(coarse.clamp(-0.999, 0.999)) + net(torch.cat([coarse, holes], 1)))


def train(sources: list[np.ndarray], seed: int, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """The network's weights after ``steps`` steps on random crops of ``sources`` (RGB uint8)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build()
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    kinds = list(MASK_TYPES)
    start = time.monotonic()
    # Crops of one size stack into a batch; sources smaller than CROP set a smaller one.
    crop = min(CROP, *(min(image.shape[:2]) for image in sources)) // 4 * 4
    if crop < 8:
        raise ValueError(f"the learned fill needs sources of at least 8x8 pixels, not {crop}")
    for step in range(steps):
        crops, holes = [], []
        for _ in range(BATCH):
            image = sources[int(rng.integers(len(sources)))]
            y = int(rng.integers(0, image.shape[0] - crop + 1))
            x = int(rng.integers(0, image.shape[1] - crop + 1))
            crops.append(image[y : y + crop, x : x + crop])
            kind = kinds[int(rng.integers(len(kinds)))]
            holes.append(make_mask(kind, crop, crop, f"fillnet{step}", int(rng.integers(1 << 30))))
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
        m = torch.from_numpy((np.stack(holes) > 127).astype(np.float32))[:, None]
        out = _run(net, x, m)
        loss = 6 * (m * (out - x).abs()).mean() + ((1 - m) * (out - x).abs()).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    log.info("fill network: %d steps on %d sources in %.1f s, last loss %.4f",
             steps, len(sources), time.monotonic() - start, loss.item())  # fmt: skip
    return {k: v.detach().contiguous() for k, v in net.state_dict().items()}


class FillNet:
    """A trained network, filling one image at a time at its own size."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        self.net = build().eval()
        self.net.load_state_dict(weights)

    def fill(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        height, width = image.shape[:2]
        pad_h, pad_w = (-height) % 4, (-width) % 4  # two stride-2 stages
        padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        hole = np.pad(mask > 127, ((0, pad_h), (0, pad_w)))
        x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 127.5 - 1
        m = torch.from_numpy(hole.astype(np.float32))[None, None]
        with torch.inference_mode():
            out = _run(self.net, x, m)[0].permute(1, 2, 0).numpy()
        pixels = np.clip((out + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)[:height, :width]
        return np.where((mask > 127)[..., None], pixels, image).astype(np.uint8)


def training_seed(seed: int) -> int:
    return seed_of(f"fillnet:{seed}", 4)
