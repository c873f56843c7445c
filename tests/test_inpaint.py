from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake.config import DataConfig, InpaintConfig, MaskConfig
from deepfake.inpaint import make_inpainter, plan, run_inpaint, run_planned_batch
from deepfake.inpaint.classical import ClassicalConfig, ClassicalInpainter
from deepfake.inpaint.stage import CodeMismatch, InpaintPlan, record_seed
from deepfake.masks.shapes import make_mask
from deepfake.masks.stage import make_masks
from deepfake.sources.stage import prepare_sources
from deepfake.stages import CODE_VERSION
from deepfake.storage import Storage


@pytest.mark.parametrize("method", ["telea", "ns", "biharmonic", "exemplar", "patchvote"])
def test_classical_fills_only_the_mask(textured: np.ndarray, method: str) -> None:
    mask = make_mask("random", 64, 64, "x", 0)
    backend = ClassicalInpainter(ClassicalConfig(methods=(method,), postprocess=()))
    (out,) = backend.inpaint([textured], [mask], [0])
    assert backend.method(0) == method
    assert out.shape == textured.shape and out.dtype == np.uint8
    outside = mask == 0
    assert np.array_equal(out[outside], textured[outside])
    assert np.abs(out[~outside].astype(int) - textured[~outside]).mean() > 5


def test_exemplar_fill_copies_real_texture_and_diffusion_does_not(textured: np.ndarray) -> None:
    from deepfake.features.forensics import duplicate_map

    noise = np.random.default_rng(0).integers(-12, 12, textured.shape)
    image = np.clip(textured + noise, 0, 255).astype(np.uint8)  # textured everywhere
    mask = make_mask("ellipse", 64, 64, "x", 0)
    inside = mask > 127
    copied = {}
    for method in ("exemplar", "telea"):
        backend = ClassicalInpainter(ClassicalConfig(methods=(method,), postprocess=()))
        (out,) = backend.inpaint([image], [mask], [0])
        copied[method] = duplicate_map(out)[inside].mean()
    assert copied["exemplar"] > 0.3 and copied["telea"] < 0.05


@pytest.mark.parametrize("kind", ["random", "ellipse", "blob", "diagonal_upper_left"])
def test_exemplar_fill_refreshed_locally_equals_a_whole_image_refresh(
    textured: np.ndarray, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepfake.inpaint import exemplar

    mask = make_mask(kind, 64, 64, "x", 3)
    local = exemplar.exemplar_fill(textured, mask)

    def refresh_everything(self, y0, y1, x0, x1, todo, level):  # type: ignore[no-untyped-def]
        self.confidence[y0 + self.r : y1 + self.r, x0 + self.r : x1 + self.r][todo] = level
        height, width = self.hole.shape
        self.update(0, height, 0, width)

    monkeypatch.setattr(exemplar._Priorities, "fill", refresh_everything)
    assert np.array_equal(exemplar.exemplar_fill(textured, mask), local)


# Not telea and ns (OpenCV reads a ring of pixels just inside the mask) nor patchvote (its
# coarse levels, made by cv2.pyrDown, average pixels up to two inside the mask's edge).
@pytest.mark.parametrize("method", ["biharmonic", "exemplar"])
def test_a_fill_never_reads_what_the_mask_hides(textured: np.ndarray, method: str) -> None:
    mask = make_mask("ellipse", 64, 64, "x", 0)
    hidden = mask > 127
    other = textured.copy()
    other[hidden] = 255 - other[hidden]  # different content under the mask, same elsewhere
    backend = ClassicalInpainter(ClassicalConfig(methods=(method,), postprocess=()))
    first, second = backend.inpaint([textured, other], [mask, mask], [0, 0])
    assert np.array_equal(first, second)


def test_fills_use_one_thread_each_and_leave_the_thread_settings_as_they_were() -> None:
    import torch
    from threadpoolctl import threadpool_info

    from deepfake.inpaint.classical import one_thread_per_task

    def blas_threads() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    torch_before, blas_before = torch.get_num_threads(), blas_threads()
    with one_thread_per_task():
        assert torch.get_num_threads() == 1 and set(blas_threads()) == {1}
    assert torch.get_num_threads() == torch_before and blas_threads() == blas_before


def test_families_share_the_records_evenly_and_methods_within_them() -> None:
    backend = ClassicalInpainter()
    assert backend.families() == ["learned", "patch", "pde", "postprocessed"]
    chosen = [backend.method(seed) for seed in range(4000)]
    families = [backend.family(m) for m in chosen]
    for family in backend.families():  # a quarter each, give or take sampling noise
        assert abs(families.count(family) / len(chosen) - 0.25) < 0.03, family
    pde = [m for m in chosen if backend.family(m) == "pde"]
    assert {"telea", "ns", "biharmonic"} == set(pde)
    edited = [m for m in chosen if "+" in m]
    assert {m.split("+")[1] for m in edited} == set(backend.cfg.postprocess)
    assert {m.split("+")[0] for m in edited} == set(backend.cfg.methods)
    assert [backend.method(seed) for seed in range(50)] == chosen[:50]  # seeded


def test_postprocessed_edits_hide_the_fill_differently(textured: np.ndarray) -> None:
    noise = np.random.default_rng(0).integers(-12, 12, textured.shape)
    textured = np.clip(textured + noise, 0, 255).astype(np.uint8)  # noise for noise to match
    mask = make_mask("ellipse", 64, 64, "x", 0)
    plain = ClassicalInpainter(ClassicalConfig(methods=("telea",), postprocess=()))
    (base,) = plain.inpaint([textured], [mask], [0])
    outside = mask == 0
    for edit in ("feather", "poisson", "noise", "resize", "jpeg"):
        backend = ClassicalInpainter(ClassicalConfig(methods=("telea",), postprocess=(edit,)))
        out = backend.fill(textured, mask, f"telea+{edit}", seed=0)
        assert out.shape == textured.shape and out.dtype == np.uint8
        assert not np.array_equal(out, base), edit
        changed_outside = np.abs(out[outside].astype(int) - textured[outside]).mean()
        if edit in ("resize", "jpeg"):  # the whole image after the edit
            assert changed_outside > 0.2, edit
        else:  # blending and noise touch the hole and its seam only
            assert changed_outside < 2.0, edit


def test_classical_refuses_mismatched_sizes(textured: np.ndarray) -> None:
    with pytest.raises(ValueError, match="differ"):
        ClassicalInpainter().inpaint([textured], [np.zeros((8, 8), np.uint8)], [0])


@pytest.fixture
def staged(tmp_path: Path):
    store = Storage(tmp_path)
    sources = prepare_sources(store, DataConfig(limit=3, image_size=48))
    masks = make_masks(store, MaskConfig(), sources)
    return store, sources, masks


class Counting(ClassicalInpainter):
    """The real classical backend, counting the images it is asked to fill."""

    calls = 0

    def inpaint(self, images, masks, seeds):
        Counting.calls += len(images)
        return super().inpaint(images, masks, seeds)


def test_stage_lists_real_and_inpainted_with_equal_format(staged) -> None:
    store, sources, masks = staged
    out = run_inpaint(store, InpaintConfig(backend="classical", batch_size=4), sources, masks)
    frame = store.read_parquet(out.manifest)
    assert (frame["variant"] == "real").sum() == 3 and (frame["label"] == 1).sum() == 27
    fakes = frame[frame["label"] == 1]
    backend = ClassicalInpainter()
    seeds = [record_seed(0, r) for r in fakes["record_id"]]  # inpaint.seed 0
    assert list(fakes["method"]) == [backend.method(s) for s in seeds]
    assert list(fakes["family"]) == [backend.family(m) for m in fakes["method"]]
    assert len(set(fakes["family"])) >= 3
    assert (frame.loc[frame["label"] == 0, "method"] == "").all()
    opened = [Image.open(f"{store.root}/{uri}") for uri in frame["uri"]]
    assert {(im.format, im.mode, im.size) for im in opened} == {("PNG", "RGB", (48, 48))}
    assert set(frame.loc[frame["label"] == 1, "backend"]) == {"classical"}


def test_interrupted_run_redoes_only_unfinished_batches(staged, monkeypatch) -> None:
    store, sources, masks = staged
    cfg = InpaintConfig(backend="classical", batch_size=4)
    first_plan = plan(store, cfg, sources, masks)
    assert (first_plan.batches, first_plan.records) == (7, 27)
    assert run_planned_batch(store, first_plan, 0)["images"] == 4
    # Killed after writing batch 1's images but before its batch manifest: batch 1 is redone.
    run_planned_batch(store, first_plan, 1)
    batch1 = set(store.read_parquet(first_plan.plan_file).query("batch == 1")["record_id"])
    for rel in store.list_files(f"{first_plan.folder}/batches"):
        uri = f"{first_plan.folder}/batches/{rel}"
        if set(store.read_parquet(uri)["record_id"]) == batch1:
            store.delete(uri)
    resumed = plan(store, cfg, sources, masks)
    assert (resumed.batches, resumed.records) == (6, 23)
    monkeypatch.setattr("deepfake.inpaint.stage.make_inpainter", lambda cfg: Counting())
    Counting.calls = 0
    out = run_inpaint(store, cfg, sources, masks)
    assert Counting.calls == 23
    clean = Storage(store.root + "-clean")
    clean_sources = prepare_sources(clean, DataConfig(limit=3, image_size=48))
    clean_masks = make_masks(clean, MaskConfig(), clean_sources)
    uninterrupted = run_inpaint(clean, cfg, clean_sources, clean_masks)
    assert uninterrupted.digest == out.digest
    assert list(clean.read_parquet(uninterrupted.manifest)["sha256"]) == list(
        store.read_parquet(out.manifest)["sha256"]
    )


def test_a_worker_with_other_code_refuses_the_batch(staged) -> None:
    store, sources, masks = staged
    made = plan(store, InpaintConfig(backend="classical", batch_size=4), sources, masks)
    assert made.code_version == CODE_VERSION  # it travels with the plan, as JSON
    from_elsewhere = InpaintPlan.model_validate_json(
        made.model_copy(update={"code_version": "0123456789abcdef"}).model_dump_json()
    )
    with pytest.raises(CodeMismatch, match="made by code 0123456789abcdef.*update the worker"):
        run_planned_batch(store, from_elsewhere, 0)
    assert not store.list_files(f"{made.folder}/images")  # nothing written


def test_auto_backend_falls_back_to_classical_when_sd2_cannot_run(staged, caplog) -> None:
    import torch

    store, sources, masks = staged
    auto = plan(store, InpaintConfig(), sources, masks)
    if auto.cfg.backend == "sd2":  # a CUDA machine that can load the SD2 weights
        assert torch.cuda.is_available() and "auto fell back" not in caplog.text
        return
    assert auto.cfg.backend == "classical" and "auto fell back" in caplog.text
    if not torch.cuda.is_available():
        assert "no CUDA GPU is visible" in caplog.text
    assert auto.folder == plan(store, InpaintConfig(backend="classical"), sources, masks).folder


def test_a_finished_stage_is_reused_whatever_the_batch_size(staged) -> None:
    store, sources, masks = staged
    a = run_inpaint(store, InpaintConfig(backend="classical", batch_size=2), sources, masks)
    b = run_inpaint(store, InpaintConfig(backend="classical", batch_size=7), sources, masks)
    assert a == b  # batch size is how fast, not what: it does not name the stage's folder


def test_batch_size_does_not_change_outputs(tmp_path: Path) -> None:
    digests = []
    for batch_size in (2, 7):  # separate storage roots: nothing cached from one to the other
        store = Storage(tmp_path / f"batch{batch_size}")
        sources = prepare_sources(store, DataConfig(limit=3, image_size=48))
        masks = make_masks(store, MaskConfig(), sources)
        cfg = InpaintConfig(backend="classical", batch_size=batch_size)
        out = run_inpaint(store, cfg, sources, masks)
        frame = store.read_parquet(out.manifest)
        batches = store.list_files(f"{out.folder}/batches")
        assert len(batches) == -(-27 // batch_size)  # really made in batches of that size
        digests.append(dict(zip(frame["record_id"], frame["sha256"], strict=True)))
    assert digests[0] == digests[1] and len(digests[0]) == 30


def test_every_record_keeps_its_photo_and_the_split_keeps_a_photo_on_one_side(tmp_path) -> None:
    from deepfake.config import SplitConfig
    from deepfake.split import split_dataset

    store = Storage(tmp_path)
    sources = prepare_sources(store, DataConfig(limit=24, image_size=48))
    photo = store.read_parquet(sources.manifest).set_index("source_id")["group"]
    assert photo.value_counts().max() > 1  # several tiles of one photo: a group is not a record
    masks = make_masks(store, MaskConfig(), sources)
    dataset = run_inpaint(store, InpaintConfig(backend="classical"), sources, masks)
    split = split_dataset(store, SplitConfig(), dataset)
    for stage in (masks, dataset, split):
        frame = store.read_parquet(stage.manifest)
        assert (frame["group"] == frame["source_id"].map(photo)).all(), stage.stage
    frame = store.read_parquet(split.manifest)
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    assert set(frame["split"]) == {"train", "test"}


def test_unknown_backend_is_refused() -> None:
    cfg = InpaintConfig.model_construct(backend="magic")
    with pytest.raises(ValueError, match="magic"):
        make_inpainter(cfg)
