"""Task-level tests: the thin wrappers called directly (``task.fn``), and the retry rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow, task

from deepfake.config import (
    DataConfig,
    FeaturesConfig,
    InpaintConfig,
    MaskConfig,
    SplitConfig,
    StorageConfig,
    SVMConfig,
)
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import is_transient
from tasks.detector import train_detector
from tasks.features import extract_features
from tasks.inpaint import collect_inpainting, plan_inpainting
from tasks.masks import make_masks
from tasks.sources import prepare_sources
from tasks.split import split_dataset


def test_stage_tasks_chain_by_storage_uris(tmp_path: Path) -> None:
    root = StorageConfig(root=str(tmp_path))
    sources = prepare_sources.fn(root, DataConfig(limit=12, image_size=48))
    masks = make_masks.fn(root, MaskConfig(), sources)
    cfg = InpaintConfig(backend="classical", batch_size=8)
    inpaint_plan = plan_inpainting.fn(root, cfg, sources, masks)
    assert inpaint_plan.batches == 14  # 108 masked copies in batches of 8
    dataset = collect_inpainting.fn(root, inpaint_plan.cfg, inpaint_plan.folder, sources)
    assert dataset.records == 12  # nothing inpainted yet: only the real images
    from deepfake.inpaint import run_planned_batch

    for index in range(inpaint_plan.batches):
        run_planned_batch(Storage(str(tmp_path)), inpaint_plan, index)
    Storage(str(tmp_path)).delete(dataset.manifest)
    dataset = collect_inpainting.fn(root, inpaint_plan.cfg, inpaint_plan.folder, sources)
    split = split_dataset.fn(root, SplitConfig(), dataset)
    features = extract_features.fn(root, FeaturesConfig(finetune_epochs=1), split)
    detector = train_detector.fn(root, SVMConfig(alpha=(0.1,), top_k=(1, 4), cv_folds=2), features)
    outputs = [sources, masks, dataset, split, features, detector]
    assert all(isinstance(o, StageOutput) for o in outputs)
    assert [o.records for o in outputs] == [12, 108, 120, 120, 120, 120]
    # Tasks pass small things only: a stage name, a folder and a digest.
    assert all(len(o.model_dump_json()) < 300 for o in outputs)
    assert Storage(str(tmp_path)).exists(detector.manifest)


def test_tasks_have_retries_and_a_cache_policy() -> None:
    stages = (prepare_sources, make_masks, collect_inpainting, split_dataset, extract_features,
              train_detector)  # fmt: skip
    for t in stages:
        assert t.retries >= 1
        assert t.cache_policy is not None and t.persist_result


attempts: list[str] = []


@task(retries=2, retry_delay_seconds=0, retry_condition_fn=is_transient)
def flaky(kind: str) -> str:
    attempts.append(kind)
    if len(attempts) == 1:
        raise {"transient": ConnectionResetError, "permanent": ValueError}[kind]("boom")
    return "ok"


@flow
def run_flaky(kind: str) -> str:
    return flaky(kind)


@pytest.mark.parametrize(("kind", "tries", "ok"), [("transient", 2, True), ("permanent", 1, False)])
def test_only_transient_errors_are_retried(prefect_server, kind: str, tries: int, ok: bool) -> None:
    attempts.clear()
    state = run_flaky(kind, return_state=True)
    assert state.is_completed() is ok
    assert len(attempts) == tries
