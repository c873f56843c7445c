from __future__ import annotations

from pathlib import Path

import pytest

from deepfake.config import ConfigError, Settings, describe_settings, load_settings


def test_defaults_are_the_offline_default() -> None:
    cfg = load_settings()
    assert cfg.data.source == "sample"
    assert cfg.inpaint.backend == "auto"  # classical here: no CUDA
    assert cfg.features.backbone == "efficientnet_lite0"
    assert len(cfg.masks.types) == 5


def test_overrides_set_dotted_keys_with_typed_values(tmp_path: Path) -> None:
    cfg = load_settings(
        overrides=["svm.cv_folds=3", "svm.C=[1, 10]", "data.limit=7", "features.input_size="],
        storage=str(tmp_path),
    )
    assert cfg.svm.cv_folds == 3
    assert cfg.svm.C == (1.0, 10.0)
    assert cfg.data.limit == 7
    assert cfg.features.input_size is None
    assert cfg.storage.root == str(tmp_path)


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("svm:\n  cv_folds: 4\n  seed: 9\ninpaint:\n  method: ns\n")
    cfg = load_settings(path, ["svm.cv_folds=2"])
    assert (cfg.svm.cv_folds, cfg.svm.seed, cfg.inpaint.method) == (2, 9, "ns")


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("svm.nope=1", ["svm.nope", "nope"]),
        ("nosuch.key=1", ["nosuch"]),
        ("svm.cv_folds.x=1", ["cv_folds"]),
        ("svm.cv_folds=many", ["svm.cv_folds"]),
        ("svm.cv_folds=1", ["svm.cv_folds"]),
        ("features.backbone=alexnet", ["alexnet"]),
        ("masks.types=[diagonal_upper_left, square]", ["square"]),
        ("novalue", ["KEY=VALUE"]),
    ],
)
def test_bad_settings_are_refused_with_their_name(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(overrides=[override])
    for word in words:
        assert word in str(err.value)


def test_bad_settings_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_settings(path)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_settings(tmp_path / "missing.yaml")


def test_digest_changes_with_any_setting_and_secrets_are_redacted() -> None:
    a, b = Settings(), load_settings(overrides=["svm.seed=1"])
    assert a.digest() != b.digest()
    assert a.data.digest() == b.data.digest()
    creds = Settings(storage="s3://AKIAEXAMPLE:sekret@bucket/prefix").public_dict()
    assert Settings(storage="s3://b/p").storage.root == "s3://b/p"
    assert "sekret" not in str(creds) and "AKIAEXAMPLE" not in str(creds)


def test_every_setting_is_described() -> None:
    rows = describe_settings()
    keys = {key for key, _, _ in rows}
    assert {"storage.root", "data.limit", "svm.cv_folds", "inpaint.method"} <= keys
    assert all(desc for _, _, desc in rows)
