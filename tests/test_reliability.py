"""Reliability: kill -9 and resume, bad images, concurrent runs, safe model files.

The crash and concurrency tests drive the real command line (``python flows/main.py``) in
processes of their own, as a user or a worker does, and kill or race them for real, each in a
Prefect home of its own (as on its own machine). A run that is killed starts its own temporary
Prefect server, so that the kill takes the server with it; the others use the test server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake.detector.bundle import live_bundle
from deepfake.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sources", "masks", "inpainted", "split", "features", "detector")
# The smallest configuration that still has every stage (fine-tuning included): two mask types,
# the evaluation's slow protocols off.
SMALL = [
    "data.image_size=64",
    "masks.types=[random,ellipse]",
    "features.finetune_epochs=1",
    "svm.alpha=[0.1]",
    "svm.top_k=[1,4]",
    "svm.cv_folds=2",
    "evaluate.bootstrap=50",
    "evaluate.robustness=false",
    "evaluate.shortcut_audit=false",
    "evaluate.repeats=1",
    "evaluate.leave_one_family_out=false",
]
# Classical inpainting, feature extraction slowed (one image a batch, at 256 px) so that a kill
# lands in the middle of it.
CLASSICAL = [*SMALL, "data.limit=12", "features.batch_size=1", "features.input_size=256"]


def command(storage: Path, settings: list[str]) -> list[str]:
    return [sys.executable, "flows/main.py", "--storage", str(storage),
            *[arg for s in settings for arg in ("--set", s)]]  # fmt: skip


def environment(home: Path, api: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return env | ({"PREFECT_API_URL": api} if api else {})


def start(
    storage: Path, settings: list[str], home: Path, log: Path, api: str | None = None
) -> subprocess.Popen:
    """``python flows/main.py`` in a process group of its own; on the Prefect API ``api``, or
    on a temporary server of its own."""
    handle = open(log, "ab")  # noqa: SIM115 (kept open by the child)
    return subprocess.Popen(command(storage, settings), cwd=ROOT, env=environment(home, api),
                            stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def run(storage: Path, settings: list[str], home: Path, api: str) -> str:
    """One whole run to completion on the Prefect API ``api``; returns what it printed."""
    log = home.with_suffix(".log")
    process = start(storage, settings, home, log, api)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    return log.read_text()


def kill_when(
    storage: Path, settings: list[str], home: Path, pattern: str, count: int, said: str = ""
) -> dict:
    """Start a run and kill -9 its process group as soon as ``count`` files match ``pattern``
    (or, with ``said``, as soon as its output has that line: a stage that writes all its files
    at its end is killed in its middle so); returns those files' (mtime, size) after the kill."""
    log = home.with_suffix(".log")
    process = start(storage, settings, home, log)
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        now = said in log.read_text(errors="replace") if said else False
        if now or (not said and len(list(storage.glob(pattern))) >= count):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            found = storage.glob(pattern) if pattern else []
            return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in found}
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    log = home.with_suffix(".log").read_text()[-2000:] if home.with_suffix(".log").exists() else ""
    pytest.fail(f"the run ended before {count} files matched {pattern} (or took 600 s):\n{log}")


def outputs(storage: Path) -> dict[str, str]:
    """Digests of every stage manifest, the published model files and the headline metrics."""
    store = Storage(storage)
    found = {}
    for rel in sorted(store.list_files("")):
        if rel.split("/")[0] in STAGES and rel.endswith("/manifest.parquet"):
            found[rel] = hashlib.sha256(store.read_bytes(rel)).hexdigest()
    live = live_bundle(store, "models")
    for name in ("svm.skops", "backbone.safetensors"):  # the backbone when fine-tuned
        if store.exists(f"{live}/{name}"):
            found[name] = hashlib.sha256(store.read_bytes(f"{live}/{name}")).hexdigest()
    metrics = store.read_json("reports/latest/metrics.json")
    found["metrics"] = json.dumps({k: metrics[k] for k in ("roc_auc", "brier", "threshold")})
    return found


def check_manifests(storage: Path) -> int:
    """Every file a manifest lists exists and has the sha256 the manifest says; returns how many
    files were checked."""
    store, checked = Storage(storage), 0
    for rel in sorted(store.list_files("")):
        if rel.split("/")[0] not in STAGES or not rel.endswith("/manifest.parquet"):
            continue
        frame = store.read_parquet(rel)
        for uri, digest in zip(frame["uri"], frame["sha256"], strict=True):
            assert hashlib.sha256(store.read_bytes(uri)).hexdigest() == digest, (rel, uri)
            checked += 1
    return checked


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prefect_api_url) -> dict[str, str]:
    """An uninterrupted run of the classical configuration."""
    base = tmp_path_factory.mktemp("reference")
    run(base / "storage", CLASSICAL, base / "home", prefect_api_url)
    return outputs(base / "storage")


def test_kills_during_extraction_training_and_evaluation_resume_with_identical_outputs(
    reference, prefect_api_url, tmp_path
):
    """One storage, killed three times: during feature extraction (after 4 of its batches),
    then, rerun, during training (after the SVM search), then, rerun, during the evaluation
    (after its first robustness figure); each rerun keeps what was finished and redoes the rest,
    and the last run's outputs are the uninterrupted run's. Nothing is published before."""
    storage = tmp_path / "storage"
    # With the robustness table, so that the evaluation takes long enough to be killed in; it
    # changes none of the outputs compared (stage manifests up to the detector, the model,
    # ROC-AUC, Brier score and threshold).
    settings = [*CLASSICAL, "evaluate.robustness=true"]
    before = kill_when(storage, settings, tmp_path / "home", "features/*/parts/*.parquet", 4)
    assert not list(storage.glob("features/*/manifest.parquet"))  # killed mid-stage
    # The detector and the evaluation write their files at their end: they are killed on a line
    # each logs in its middle.
    for stage, line in (("detector", "detector: alpha"), ("evaluation", "robustness: jpeg_95")):
        kill_when(storage, settings, tmp_path / f"home-{stage}", "", 0, said=line)
        assert not list(storage.glob(f"{stage}/*/manifest.parquet"))  # killed mid-stage
        assert not (storage / "models" / "latest.json").exists()  # nothing published
        if stage == "detector":  # the run after the first kill resumed the features
            printed = (tmp_path / "home-detector.log").read_text()
            assert "batches already done" in printed
            assert "reusing the fine-tuned backbone" in printed
    for path, stamp in before.items():  # every batch finished before the kill is kept as it was
        assert (path.stat().st_mtime_ns, path.stat().st_size) == stamp, path
    run(storage, settings, tmp_path / "home-last", prefect_api_url)
    assert outputs(storage) == reference
    assert check_manifests(storage) > 0


def test_kill_during_inpainting_resumes_with_identical_outputs(prefect_api_url, tmp_path):
    from deepfake.inpaint.random_pipeline import build_random_pipeline

    model = build_random_pipeline(tmp_path / "tiny-sd2")
    # Fine-tuning is not what this test is about (the extraction test kills it): frozen.
    sd2 = [*SMALL, "features.finetune_epochs=0", "data.limit=6", "inpaint.backend=sd2",
           f"inpaint.sd2.model={model}", "inpaint.sd2.device=cpu", "inpaint.sd2.steps=2",
           "inpaint.sd2.resolution=64", "inpaint.batch_size=2"]  # fmt: skip
    run(tmp_path / "reference", sd2, tmp_path / "home-ref", prefect_api_url)
    storage = tmp_path / "storage"
    before = kill_when(storage, sd2, tmp_path / "home", "inpainted/*/batches/*.parquet", 3)
    assert not list(storage.glob("inpainted/*/manifest.parquet"))
    printed = run(storage, sd2, tmp_path / "home2", prefect_api_url)
    assert "records already done" in printed
    for path, stamp in before.items():
        assert (path.stat().st_mtime_ns, path.stat().st_size) == stamp, path
    assert outputs(storage) == outputs(tmp_path / "reference")
    assert check_manifests(storage) > 0


def test_two_runs_on_the_same_storage_at_once(reference, prefect_api_url, tmp_path):
    storage = tmp_path / "storage"
    runs = [start(storage, CLASSICAL, tmp_path / f"home{i}", tmp_path / f"run{i}.log",
                  prefect_api_url) for i in (1, 2)]  # fmt: skip
    for i, process in enumerate(runs, 1):
        assert process.wait(timeout=600) == 0, (tmp_path / f"run{i}.log").read_text()[-3000:]
    assert outputs(storage) == reference
    assert check_manifests(storage) > 0
    # latest is one run's complete report and detector, not a mixture of both.
    store = Storage(storage)
    run_id = store.read_json("reports/latest/run.json")["run_id"]
    assert store.read_json("models/latest.json")["run_id"] == run_id
    from deepfake.predict import Detector

    Detector.load(store, "models/latest", device="cpu")  # every digest in the bundle agrees


# -- bad images -----------------------------------------------------------------------------


def _png(array: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def decompression_bomb(side: int = 20_000) -> bytes:
    """A valid greyscale PNG of side x side pixels that compresses to a few hundred KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit greyscale
    compressor, row = zlib.compressobj(9), bytes(side + 1)  # filter byte + a black row
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def bad_image_folder(root: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Ten good photos, five odd but usable files and six unusable ones. Returns the usable
    files' expected upright RGB pixels and the unusable files' expected reasons."""
    from deepfake.sources.sample import SAMPLE_PHOTOS, photo_path

    root.mkdir(parents=True)
    usable = {}
    photos = [np.asarray(Image.open(photo_path(p, n)).convert("RGB")) for _, p, n in SAMPLE_PHOTOS]
    for i, photo in enumerate(photos[:10]):
        crop = photo[100:180, 120:200]
        (root / f"good{i}.png").write_bytes(_png(crop))
        usable[f"good{i}.png"] = crop
    odd = photos[10][50:130, 60:140]
    cmyk = io.BytesIO()
    Image.fromarray(odd).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    (root / "cmyk.jpg").write_bytes(cmyk.getvalue())
    usable["cmyk.jpg"] = np.asarray(Image.open(io.BytesIO(cmyk.getvalue())).convert("RGB"))
    grey16 = photos[11][:80, :80, 0].astype(np.uint16) * 257
    (root / "grey16.png").write_bytes(_png(grey16))
    usable["grey16.png"] = np.repeat(photos[11][:80, :80, :1], 3, axis=2)
    palette = Image.fromarray(photos[12][:80, :80]).quantize(64)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    (root / "palette.png").write_bytes(buffer.getvalue())
    usable["palette.png"] = np.asarray(palette.convert("RGB"))
    rgba = np.dstack([photos[13][:80, :80], np.full((80, 80), 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # a transparent corner: composited on white
    (root / "alpha.png").write_bytes(_png(rgba))
    expected = photos[13][:80, :80].copy()
    expected[:10, :10] = 255
    usable["alpha.png"] = expected
    tall = photos[14][:96, :64]  # stored sideways, EXIF says: rotate 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "exif_rotated.png").write_bytes(_png(np.rot90(tall, k=1).copy(), exif=exif))
    usable["exif_rotated.png"] = tall

    good = _png(photos[15][:80, :80])
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    jpeg = io.BytesIO()
    Image.fromarray(photos[16][:80, :80]).save(jpeg, format="JPEG")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    (root / "not_an_image.png").write_text("this is a text file with an image suffix")
    (root / "one_pixel.png").write_bytes(_png(np.zeros((1, 1, 3), np.uint8)))
    (root / "bomb.png").write_bytes(decompression_bomb())
    unusable = {
        "empty.png": "empty file",
        "truncated.png": "not a readable image",
        "truncated.jpg": "not a readable image",
        "not_an_image.png": "not a readable image",
        "one_pixel.png": "only 1x1 pixels",
        "bomb.png": "decompression bomb",
    }
    return usable, unusable


def test_bad_images_are_handled_or_quarantined_and_predict_names_them(
    prefect_server, tmp_path, capsys
):
    from deepfake.config import load_settings
    from deepfake.images import square
    from deepfake.sources.folder import source_id_for
    from flows.main import pipeline
    from flows.predict import main as predict

    folder = tmp_path / "incoming"
    usable, unusable = bad_image_folder(folder)
    assert len((folder / "bomb.png").read_bytes()) < 2_000_000  # small file, 400 Mpx image
    settings = [*SMALL, "data.source=folder", f"data.folder.path={folder}"]
    cfg = load_settings(overrides=settings, storage=str(tmp_path / "storage"))
    summary = pipeline(settings=cfg.model_dump(mode="json"))
    store = Storage(tmp_path / "storage")
    metrics = store.read_json(f"reports/{summary['run_id']}/metrics.json")
    ids = {source_id_for(name): name for name in [*usable, *unusable]}
    quarantined = {ids[s["source_id"]]: s["reason"] for s in metrics["skipped_inputs"]}
    assert set(quarantined) == set(unusable)
    for name, reason in unusable.items():  # the reason names the file and the problem
        assert f"{name}: " in quarantined[name] and reason in quarantined[name], quarantined[name]
    report = store.read_bytes("reports/latest/report.md").decode()
    assert all(name in report for name in unusable)
    # Every usable file became a source with the right pixels, upright and RGB.
    sources = store.read_parquet(next(f"sources/{p}" for p in store.list_files("sources")
                                      if p.endswith("manifest.parquet")))  # fmt: skip
    by_name = {ids[s]: uri for s, uri in zip(sources["source_id"], sources["uri"], strict=True)}
    assert set(by_name) == set(usable)
    for name, pixels in usable.items():
        want = np.asarray(square(Image.fromarray(pixels), 64)).astype(int)
        got = np.asarray(Image.open(store.uri(by_name[name]))).astype(int)
        assert got.shape == (64, 64, 3) and np.abs(got - want).max() <= 2, name

    code = predict(["--storage", str(tmp_path / "storage"), "--json", str(folder)])
    lines = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert code == 1 and set(lines) == set(usable) | set(unusable)
    for name, reason in unusable.items():
        assert name in lines[name]["error"] and reason in lines[name]["error"], lines[name]
    for name in usable:
        assert 0 <= lines[name]["score"] <= 1 and lines[name]["label"] in {"real", "inpainted"}


# -- safe model files -----------------------------------------------------------------------


class Payload:
    """Unpickling this creates a file: proof that code from a model file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Storage:
    """A real fine-tuned detector bundle (tiny) to tamper with."""
    from deepfake.config import load_settings
    from deepfake.detector import train_detector
    from deepfake.features.stage import extract_features
    from deepfake.inpaint import run_inpaint
    from deepfake.masks.stage import make_masks
    from deepfake.sources.stage import prepare_sources
    from deepfake.split import split_dataset

    store = Storage(tmp_path_factory.mktemp("bundle"))
    cfg = load_settings(overrides=[*SMALL, "data.limit=12", "inpaint.backend=classical"])
    sources = prepare_sources(store, cfg.data)
    dataset = run_inpaint(store, cfg.inpaint, sources, make_masks(store, cfg.masks, sources))
    features = extract_features(store, cfg.features, split_dataset(store, cfg.split, dataset))
    detector = train_detector(store, cfg.svm, features)
    for name in store.list_files(detector.folder):
        store.write_bytes(f"good/{name}", store.read_bytes(f"{detector.folder}/{name}"))
    return store


def tampered(store: Storage, name: str, data: bytes, fix_digest: bool) -> str:
    """A copy of the good bundle with file ``name`` replaced (and its digest updated, so that
    only the file format stands between the payload and the loader)."""
    from deepfake.hashing import sha256

    folder = f"bad-{name}-{fix_digest}"
    for file in store.list_files("good"):
        store.write_bytes(f"{folder}/{file}", store.read_bytes(f"good/{file}"))
    store.write_bytes(f"{folder}/{name}", data)
    if fix_digest:
        meta = store.read_json(f"{folder}/detector.json")
        meta["svm_sha256" if name == "svm.skops" else "weights_sha256"] = sha256(data)
        store.write_json(f"{folder}/detector.json", meta)
    return folder


@pytest.mark.parametrize("name", ["svm.skops", "backbone.safetensors"])
def test_a_model_file_holding_a_pickle_is_refused_unexecuted(bundle, tmp_path, name, capsys):
    import torch

    from deepfake.predict import Detector
    from flows.predict import main as predict

    marker = tmp_path / "code-ran"
    payload = pickle.dumps(Payload(marker))
    if name == "backbone.safetensors":  # torch's own format: a pickle inside a zip
        buffer = io.BytesIO()
        torch.save({"weights": Payload(marker)}, buffer)
        payload = buffer.getvalue()
    folder = tampered(bundle, name, payload, fix_digest=True)
    with pytest.raises(ValueError, match=f"{name}: not a (skops|safetensors)"):
        Detector.load(bundle, folder, device="cpu")
    code = predict(["--model", bundle.uri(folder), str(tmp_path)])
    assert code == 2 and name in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("name", ["svm.skops", "backbone.safetensors"])
def test_a_bundle_whose_digest_does_not_match_is_refused(bundle, name):
    from deepfake.predict import Detector

    good = bundle.read_bytes(f"good/{name}")
    folder = tampered(bundle, name, good[:-1] + bytes([good[-1] ^ 1]), fix_digest=False)
    with pytest.raises(ValueError, match="digest does not match"):
        Detector.load(bundle, folder, device="cpu")
    Detector.load(bundle, "good", device="cpu")  # the untouched bundle loads
