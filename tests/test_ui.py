"""What a user sees in the Prefect UI, in a real browser: headless Chromium (Debian's package)
driven by Playwright, against the loopback server after one run of the pipeline's deployment on
process workers (tests/loopback.py). Screenshots go to the test's temporary folder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no Chromium here: .ci/run installs Debian's chromium package as root",
)
# Written by the library (deepfake/) inside tasks: they must reach the run's logs in the UI.
LIBRARY_LINES = ("fine-tuning: epoch 1/1", "training cells from", "robustness: jpeg_80")
PROGRESS = ("inpainting-progress", "fine-tuning-progress", "features-progress",
            "svm-search-progress", "robustness-progress")  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui(loopback_stack, deployed_pipeline_run):
    """The run, its logs and artifacts as the API has them, and the UI's address."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run, _ = deployed_pipeline_run
    with (
        temporary_settings({PREFECT_API_URL: loopback_stack.api}),
        get_client(sync_client=True) as client,
    ):
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        deployment = client.read_deployment_by_name("deepfake-pipeline/pipeline-local")
    return {
        "run": run,
        "logs": logs,
        "artifacts": artifacts,
        "deployment": deployment,
        "base": loopback_stack.api.removesuffix("/api"),
    }


def _shoot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot {path}")


def test_library_log_lines_are_in_the_run_logs(ui, browser, tmp_path) -> None:
    library = [log for log in ui["logs"] if log.name == "deepfake"]
    for line in LIBRARY_LINES:  # in the API, under the task run that wrote them
        found = [log for log in library if line in log.message]
        assert found and all(log.task_run_id for log in found), line
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{ui['base']}/runs/flow-run/{ui['run'].id}", wait_until="networkidle")
    line = page.get_by_text("training cells from", exact=False).first
    line.wait_for(timeout=30_000)
    line.scroll_into_view_if_needed()
    _shoot(page, tmp_path, "flow-run-logs")
    print(f"library lines in this run's logs: {len(library)} of {len(ui['logs'])}")
    page.close()


def test_report_artifact_shows_every_plot(ui, browser, tmp_path) -> None:
    report = next(a for a in ui["artifacts"] if a.key == "detector-report")
    assert "data:image/png;base64," in report.data and "](roc.png)" not in report.data
    assert len(report.data) < 1_500_000, "keep the artifact a reasonable size"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{ui['base']}/artifacts/artifact/{report.id}", wait_until="networkidle")
    page.locator("img[alt='ROC']").first.wait_for(timeout=30_000)
    sizes = page.eval_on_selector_all(
        "img[src^='data:image/png']", "imgs => imgs.map(i => [i.alt, i.naturalWidth])"
    )
    shown = {alt for alt, width in sizes if width > 0}
    assert {"ROC", "PR", "Confusion matrix", "Per mask type", "Robustness", "Examples"} <= shown
    assert all(width > 0 for _, width in sizes), sizes
    page.locator("img[alt='ROC']").first.scroll_into_view_if_needed()
    _shoot(page, tmp_path, "report-artifact")
    page.close()


def test_progress_artifacts_end_at_100_percent(ui, browser, tmp_path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: f"{ui['base']}/api"}),
        get_client(sync_client=True) as client,
    ):  # the batches' progress belongs to the pipeline run; the stages' to its task runs
        latest = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(PROGRESS)))
        )
    by_key = {a.key: a for a in latest}
    assert set(by_key) == set(PROGRESS)
    assert {key: a.data for key, a in by_key.items()} == dict.fromkeys(PROGRESS, 100.0)
    counts: dict[str, int] = {}
    for artifact in ui["artifacts"]:
        counts[artifact.type] = counts.get(artifact.type, 0) + 1
    print(f"\nartifacts of the run by type: {counts}")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    for key in PROGRESS:  # each artifact's page says so too
        page.goto(f"{ui['base']}/artifacts/artifact/{by_key[key].latest_id}",
                  wait_until="networkidle")  # fmt: skip
        page.get_by_text("Progress: 100%", exact=False).first.wait_for(timeout=30_000)
    _shoot(page, tmp_path, "progress-artifact")
    page.close()


def test_deployment_run_form_lists_the_settings(ui, browser, tmp_path, loopback_stack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{ui['base']}/deployments/deployment/{ui['deployment'].id}/run",
              wait_until="networkidle")  # fmt: skip
    # Every stage's section, with each setting, its description and its default.
    sections = ("Storage", "Data", "Masks", "Inpaint", "Split", "Features", "Svm", "Evaluate")
    for text in (*sections, "Finetune Epochs", "Fine-tune the backbone", "Cv Folds", "Image Size"):
        page.get_by_text(text, exact=False).first.wait_for(timeout=30_000)
    values = page.locator("input, select, textarea").evaluate_all("els => els.map(e => e.value)")
    assert {"128", "danielmao2019/deepfakeart"} <= set(values)  # two defaults of data.*
    page.get_by_text("Finetune Epochs", exact=False).first.scroll_into_view_if_needed()
    _shoot(page, tmp_path, "deployment-run-form")
    with (
        temporary_settings({PREFECT_API_URL: loopback_stack.api}),
        get_client(sync_client=True) as client,
    ):
        before = len(client.read_flow_runs())
    # A bad value typed into the form: the UI shows the server's refusal, naming the setting,
    # and no run is made.
    label = page.locator(".schema-form-property__label", has_text=re.compile(r"^Cv Folds"))
    page.locator(".schema-form-property", has=label).last.locator("input").fill("1")
    page.get_by_role("button", name="Submit").click()
    refusal = "Validation failed for field 'settings.svm.cv_folds'"
    page.get_by_text(refusal, exact=False).first.wait_for(timeout=30_000)
    assert "1 is less than the minimum of 2" in page.inner_text("body")
    _shoot(page, tmp_path, "deployment-run-form-refused")
    page.close()
    # The same refusal through the API (409, naming the setting).
    from prefect.exceptions import PrefectHTTPStatusError

    with (
        temporary_settings({PREFECT_API_URL: loopback_stack.api}),
        get_client(sync_client=True) as client,
    ):
        assert len(client.read_flow_runs()) == before
        with pytest.raises(PrefectHTTPStatusError, match="cv_folds|minimum") as refused:
            client.create_flow_run_from_deployment(
                ui["deployment"].id, parameters={"settings": {"svm": {"cv_folds": 1}}}
            )
        assert refused.value.response.status_code == 409
        assert len(client.read_flow_runs()) == before
