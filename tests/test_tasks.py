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
from tasks.evaluate import evaluate_detector
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


STAGE_TASKS = (prepare_sources, make_masks, plan_inpainting, collect_inpainting, split_dataset,
               extract_features, train_detector, evaluate_detector)  # fmt: skip


def test_every_stage_task_retries_transient_errors_only() -> None:
    for t in STAGE_TASKS:
        assert t.retries == 2 and t.retry_delay_seconds, t.name
        assert t.retry_condition_fn is is_transient, t.name
    for t in set(STAGE_TASKS) - {plan_inpainting}:  # planning always looks again
        assert t.cache_policy is not None and t.persist_result, t.name


@flow
def split_flow(root: StorageConfig, dataset: StageOutput) -> StageOutput:
    return split_dataset.with_options(retry_delay_seconds=0)(root, SplitConfig(), dataset)


@pytest.mark.parametrize(
    ("limit", "fault", "calls", "completed"),
    [
        (1, None, 1, False),  # one source, one photo: the split raises ValueError, never retried
        (12, ConnectionResetError, 2, True),  # the storage drops a connection once: retried
    ],
)
def test_a_real_task_is_retried_only_on_transient_errors(
    prefect_server, tmp_path, monkeypatch, limit, fault, calls, completed
) -> None:
    from deepfake.split import stage as split

    root = StorageConfig(root=str(tmp_path))
    sources = prepare_sources.fn(root, DataConfig(limit=limit, image_size=48))
    seen = []
    real_split = split.grouped_split

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(1)
        if fault is not None and len(seen) == 1:
            raise fault("connection reset by peer")
        return real_split(*args, **kwargs)

    monkeypatch.setattr(split, "grouped_split", counting)
    state = split_flow(root, sources, return_state=True)
    assert len(seen) == calls and state.is_completed() is completed
    if not completed:
        with pytest.raises(ValueError, match="at least 2 source groups"):
            state.result()


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
