"""TensorFlow's "SAME" padding without padding the input, for inference.

timm's ``tf_`` models (EfficientNet-Lite0) pad the input of each strided convolution in their
forward pass, because TensorFlow's "SAME" padding of a stride-2 convolution over an even side is
one pixel more on the bottom and right than on the top and left, which ``conv2d``'s symmetric
padding cannot say. That pad copies the whole activation: 15-20 % of Lite0's time on a CPU.

The same function without the copy: a kernel one tap larger in front, whose first tap is zero,
with the larger (symmetric) padding. Its windows start one pixel earlier and their first tap
adds nothing, so they cover exactly the pixels of TensorFlow's windows, and there are as many.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn


def _same_padding(size: int, kernel: int, stride: int) -> int:
    """TensorFlow's total "SAME" padding of one side (dilation 1), as timm computes it."""
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


class StaticSameConv(nn.Conv2d):
    """A timm ``Conv2dSame`` (dilation 1) that pads nothing: the same outputs, for inference
    (its weights are copied, with a zero tap in front, when it is made)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                         conv.dilation, conv.groups, conv.bias is not None,
                         device=conv.weight.device, dtype=conv.weight.dtype)  # fmt: skip
        layout = (
            torch.channels_last
            if conv.weight.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
            # By which sides the padding is odd (one pixel more at the end): a zero tap in front.
            # Buffers, so that moving the model moves them; not saved with its weights.
            for odd_h in (0, 1):
                for odd_w in (0, 1):
                    kernel = F.pad(self.weight, (odd_w, 0, odd_h, 0))
                    self.register_buffer(f"kernel_{odd_h}{odd_w}",
                                         kernel.contiguous(memory_format=layout),
                                         persistent=False)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [_same_padding(size, kernel, stride) for size, kernel, stride in
                zip(x.shape[-2:], self.kernel_size, self.stride, strict=True)]  # fmt: skip
        weight = getattr(self, f"kernel_{pads[0] % 2}{pads[1] % 2}")
        padding = ((pads[0] + 1) // 2, (pads[1] + 1) // 2)
        return F.conv2d(x, weight, self.bias, self.stride, padding, 1, self.groups)


def without_same_padding(model: nn.Module) -> nn.Module:
    """``model`` (in place) with every timm ``Conv2dSame`` of dilation 1 made a
    ``StaticSameConv``; a model without them is returned as it is."""
    module = sys.modules.get("timm.layers.conv2d_same")
    if module is None:  # no timm model was ever built in this process
        return model
    for name, conv in list(model.named_modules()):
        if isinstance(conv, module.Conv2dSame) and conv.dilation == (1, 1):
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attribute,
                    StaticSameConv(conv))  # fmt: skip
    return model
