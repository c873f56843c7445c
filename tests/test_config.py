from __future__ import annotations

from pathlib import Path

import pytest

from deepfake.config import ConfigError, Settings, describe_settings, load_settings


def test_defaults_are_the_offline_default() -> None:
    cfg = load_settings()
    assert cfg.data.source == "sample"
    assert cfg.inpaint.backend == "auto"  # classical here: no CUDA
    assert cfg.features.backbone == "efficientnet_lite0"
    assert len(cfg.masks.types) == 9


def test_overrides_set_dotted_keys_with_typed_values(tmp_path: Path) -> None:
    cfg = load_settings(
        overrides=["svm.cv_folds=3", "svm.alpha=[1, 10]", "data.limit=7", "features.input_size="],
        storage=str(tmp_path),
    )
    assert cfg.svm.cv_folds == 3
    assert cfg.svm.alpha == (1.0, 10.0)
    assert cfg.data.limit == 7
    assert cfg.features.input_size is None
    assert cfg.storage.root == str(tmp_path)


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("svm:\n  cv_folds: 4\n  seed: 9\ninpaint:\n  classical:\n    methods: [ns]\n")
    cfg = load_settings(path, ["svm.cv_folds=2"])
    assert (cfg.svm.cv_folds, cfg.svm.seed, cfg.inpaint.classical.methods) == (2, 9, ("ns",))


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
        ("inpaint.steps=4", ["inpaint.steps", "inpaint.sd2.steps"]),
        ("inpaint.method=ns", ["inpaint.method", "inpaint.classical.methods"]),
        ("inpaint.sd2.paste_back=true", ["inpaint.sd2.paste_back", "inpaint.sd2.variants"]),
        ("svm.C=[1.0]", ["svm.C", "svm.alpha"]),
        ("features.crop_size=32", ["features.crop_size", "features.cell"]),
        ("inpaint.backend=dalle", ["dalle"]),
        ("data.source=web", ["web"]),
        ("data.path=/x", ["data.path", "data.folder.path"]),
        ("data.kaggle_archive=/x.zip", ["data.kaggle_archive", "data.kaggle.archive"]),
        ("data.max_tiles_per_image=3", ["data.max_tiles_per_image", "data.sample."]),
        ("data.kaggle.path=/x", ["data.kaggle.path", "archive"]),
    ],
)
def test_bad_settings_are_refused_with_their_name(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(overrides=[override])
    for word in words:
        assert word in str(err.value)


def test_a_limit_too_small_to_train_is_refused_before_any_work() -> None:
    """The grouped split holds out the ceiling of test_size of the sources; cross-validation
    needs 2 left to train on."""
    with pytest.raises(ConfigError) as err:
        load_settings(overrides=["data.limit=2"])
    assert str(err.value).startswith("invalid settings: data.limit=2 leaves 1 source")
    assert "Value error" not in str(err.value) and ": :" not in str(err.value)
    assert "data.limit >= 3" in str(err.value)
    with pytest.raises(ConfigError, match="data.limit >= 4"):
        load_settings(overrides=["data.limit=3", "split.test_size=0.5"])
    assert load_settings(overrides=["data.limit=3"]).data.limit == 3
    assert load_settings(overrides=["data.limit=4", "split.test_size=0.5"]).data.limit == 4


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
    creds = Settings(storage="s3://AKIAEXAMPLE:sekret@bucket/prefix").result_dict()
    assert Settings(storage="s3://b/p").storage.root == "s3://b/p"
    assert "sekret" not in str(creds) and "AKIAEXAMPLE" not in str(creds)


def test_old_flat_keys_in_a_settings_file_name_their_new_place(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("inpaint:\n  steps: 4\n")
    with pytest.raises(ConfigError, match="inpaint.steps is now inpaint.sd2.steps"):
        load_settings(path)
    path.write_text("data:\n  source: kaggle\n  kaggle_archive: /x.zip\n")
    with pytest.raises(ConfigError, match="data.kaggle_archive is now data.kaggle.archive"):
        load_settings(path)


def test_only_the_chosen_source_names_the_sources_folder() -> None:
    sample = Settings().data
    other_kaggle = load_settings(overrides=["data.kaggle.dataset=me/mine"]).data
    other_folder = load_settings(overrides=["data.folder.path=/photos"]).data
    assert sample.digest() == other_kaggle.digest() == other_folder.digest()
    assert load_settings(overrides=["data.sample.max_tiles_per_image=3"]).data.digest() != (
        sample.digest()
    )
    kaggle = load_settings(overrides=["data.source=kaggle"]).data
    renamed = load_settings(overrides=["data.source=kaggle", "data.kaggle.dataset=me/m"]).data
    assert kaggle.digest() != renamed.digest() != sample.digest()


def test_every_section_shares_one_base() -> None:
    from deepfake.section import Section

    def sections(model: type, path: str = "") -> list[tuple[str, type]]:
        out = []
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and hasattr(kind, "model_fields"):
                out += [(f"{path}{name}", kind), *sections(kind, f"{path}{name}.")]
        return out

    found = dict(sections(Settings))
    assert {"data.kaggle", "data.folder", "inpaint.sd2", "svm", "evaluate"} <= set(found)
    assert all(issubclass(kind, Section) for kind in found.values()), found


def test_recorded_settings_leave_out_where_and_how_fast() -> None:
    fast = load_settings(
        overrides=[
            "svm.n_jobs=1",
            "features.batch_size=8",
            "inpaint.batch_size=3",
            "inpaint.sd2.compile=true",
            "features.device=cpu",
        ],  # fmt: skip
        storage="/elsewhere",
    )
    assert fast.result_dict() == Settings().result_dict()
    assert "storage" not in Settings().result_dict()
    changed = load_settings(overrides=["inpaint.classical.radius=3"]).result_dict()
    assert changed["inpaint"]["classical"]["radius"] == 3 != Settings().result_dict()


def test_validating_settings_loads_neither_torch_nor_pandas() -> None:
    import subprocess
    import sys

    probe = (
        "import sys; from deepfake.config import load_settings; "
        "load_settings(overrides=['inpaint.backend=sd2', 'features.backbone=resnet50', "
        "'masks.types=[random]', 'data.source=kaggle']); "
        "print(sorted(m for m in ('torch', 'pandas', 'pyarrow') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr


def test_every_setting_is_described() -> None:
    rows = describe_settings()
    keys = {key for key, _, _ in rows}
    assert {"storage.root", "data.limit", "svm.cv_folds", "inpaint.classical.methods",
            "inpaint.sd2.steps"} <= keys  # fmt: skip
    assert all(desc for _, _, desc in rows)
