from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake.config import DataConfig, FeaturesConfig, InpaintConfig, MaskConfig
from deepfake.data import run_sources
from deepfake.data.sample import photo_path
from deepfake.features import FeatureExtractor, feature_matrix, run_features
from deepfake.features.backbones import BACKBONES, WeightsUnavailable, efficientnet_lite0
from deepfake.inpaint import run_inpaint
from deepfake.masks import run_masks
from deepfake.storage import Storage


def test_default_backbone_has_real_imagenet_weights() -> None:
    model = efficientnet_lite0(classifier=True).eval()
    cat = Image.open(photo_path("skimage.data", "chelsea.png")).convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.array(cat)).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        top = model((x - 0.5) / 0.5).argmax(1).item()
    assert top == 285  # ImageNet "Egyptian cat"


def test_extractor_gives_one_vector_per_image(textured: np.ndarray) -> None:
    extractor = FeatureExtractor("efficientnet_lite0", input_size=96, device="cpu")
    out = extractor.transform([textured, textured[::-1].copy(), textured])
    assert out.shape == (3, 1280) and out.dtype == np.float32
    assert np.allclose(out[0], out[2], atol=1e-5)
    assert not np.allclose(out[0], out[1], atol=1e-3)


def test_torchvision_backbone_without_weights_names_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):  # the network is outside: fail as a refused download does
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable) as err:
        BACKBONES["resnet50"].build()
    expected = tmp_path / "hub" / "checkpoints"
    assert str(expected) in str(err.value) and "resnet50-" in str(err.value)


def test_torchvision_backbone_loads_weights_from_torch_home(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    target = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    target.parent.mkdir(parents=True)
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), target)
    model = BACKBONES["resnet50"].build().eval()
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 2048)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


def test_feature_stage_keeps_manifest_columns(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    sources = run_sources(store, DataConfig(limit=2, image_size=48))
    masks = run_masks(store, MaskConfig(), sources)
    dataset = run_inpaint(store, InpaintConfig(), sources, masks)
    out = run_features(store, FeaturesConfig(input_size=64, batch_size=5), dataset)
    frame = store.read_parquet(out.manifest)
    assert len(frame) == 12
    assert feature_matrix(frame).shape == (12, 1280)
    assert {"record_id", "group", "variant", "label", "uri", "sha256"} <= set(frame.columns)
    # Batch size is how fast, not what: another batch size reuses the same finished output.
    assert run_features(store, FeaturesConfig(input_size=64, batch_size=3), dataset) == out
