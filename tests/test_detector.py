from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfake.config import (
    DataConfig,
    FeaturesConfig,
    InpaintConfig,
    MaskConfig,
    SplitConfig,
    SVMConfig,
)
from deepfake.detector import BUNDLE_FILE, MODEL_FILE, copyrule, heldout, load_model, probability
from deepfake.detector.model import platt_calibration, top_k_mean
from deepfake.detector.settings import HeldOut
from deepfake.detector.stage import PROTOCOLS_FILE, train_detector
from deepfake.detector.training import choose, held_out_folds, search_alpha
from deepfake.features.stage import extract_features
from deepfake.inpaint.stage import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.predict import Detector
from deepfake.sources.stage import prepare_sources
from deepfake.split import grouped_split, split_dataset
from deepfake.storage import Storage

SVM = SVMConfig(alpha=(0.1,), top_k=(1, 4), cv_folds=3, n_jobs=1)


FAMILY = {"telea": "pde", "ns": "pde", "exemplar": "patch"}


def frame_of(groups: int = 6, methods: tuple[str, ...] = ("telea", "exemplar")) -> pd.DataFrame:
    """Records as the stages write them: a real image per group and one fake per method."""
    rows = []
    for g in range(groups):
        rows.append({"record_id": f"g{g}", "group": f"g{g}", "label": 0, "method": "",
                     "family": ""})  # fmt: skip
        for m in methods:
            rows.append({"record_id": f"g{g}__{m}", "group": f"g{g}", "label": 1, "method": m,
                         "family": FAMILY[m]})  # fmt: skip
    return pd.DataFrame(rows)


def test_grouped_split_never_shares_a_group() -> None:
    groups = np.repeat(np.arange(10), 6)
    train, test = grouped_split(groups, 0.3, seed=1)
    assert len(train) and len(test)
    assert not set(groups[train]) & set(groups[test])
    assert len(train) + len(test) == len(groups)
    with pytest.raises(ValueError, match="at least 2"):
        grouped_split(np.zeros(5), 0.3, 0)


def test_alpha_search_is_grouped_and_finds_the_signal() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(12), 40)
    y = np.tile([0, 1], 240)
    X = rng.normal(0, 1, (480, 8)) + rng.normal(0, 1, (12, 8))[groups]  # group offsets
    X[:, 0] += 2.0 * y
    alpha, aucs = search_alpha(X, y, groups, SVMConfig(alpha=(0.01, 0.1), cv_folds=3, n_jobs=1))
    assert set(aucs) == {0.01, 0.1} and alpha in aucs
    assert min(aucs.values()) > 0.85
    with pytest.raises(ValueError, match="2 source groups"):
        search_alpha(X[:40], y[:40], groups[:40], SVM)


def test_held_out_folds_leave_out_photos_and_a_family() -> None:
    frame = frame_of(methods=("telea", "ns", "exemplar"))
    folds = held_out_folds(frame, SVM)
    assert {f.left_out for f in folds} == {"pde", "patch"} and len(folds) == 6
    for fold in folds:
        train, held = frame.iloc[fold.train], frame.iloc[fold.held_out]
        assert not set(train["group"]) & set(held["group"])
        assert fold.left_out not in set(train["family"])  # the whole family: telea and ns
        assert set(held["family"]) == {"", fold.left_out}
    one_family = frame_of(methods=("telea", "ns"))  # one family: crossed with methods
    assert {f.left_out for f in held_out_folds(one_family, SVM)} == {"telea", "ns"}
    plain = held_out_folds(frame, SVM, cross=False)
    assert len(plain) == 3 and {f.left_out for f in plain} == {None}


def test_protocols_repeat_the_split_and_leave_each_family_and_method_out() -> None:
    frame = frame_of(groups=8, methods=("telea", "ns", "exemplar"))
    planned = heldout.plan(frame, repeats=2, test_size=0.25, seed=5, leave_out=("family",))
    assert [p.name for p in planned] == [
        "split 1", "split 1, without family patch", "split 1, without family pde",
        "split 2", "split 2, without family patch", "split 2, without family pde",
    ]  # fmt: skip
    for p in planned[1:3]:
        assert p.left_out not in set(frame.iloc[p.train]["family"])
        assert set(frame.iloc[p.test]["family"]) == {"", p.left_out}
    planned = heldout.plan(frame, repeats=2, test_size=0.25, seed=5, leave_out=("method",))
    assert [p.name for p in planned][:4] == [
        "split 1", "split 1, without method exemplar", "split 1, without method ns",
        "split 1, without method telea",
    ]  # fmt: skip
    first, second = planned[0], planned[3]
    assert np.array_equal(first.train, grouped_split(frame["group"].to_numpy(), 0.25, 5)[0])
    assert not np.array_equal(first.test, second.test)  # another grouped split
    for p in planned:
        train, test = frame.iloc[p.train], frame.iloc[p.test]
        assert not set(train["group"]) & set(test["group"])
        if p.left_out:
            assert p.left_out not in set(train["method"])
            assert set(test["method"]) == {"", p.left_out}


def test_choose_picks_the_aggregation_and_threshold_on_held_out_scores() -> None:
    frame = frame_of(groups=9, methods=("telea",))
    folds = held_out_folds(frame, SVM)
    labels = frame["label"].to_numpy()
    rng = np.random.default_rng(1)
    # 16 cells per image; a fake has one hot cell (a small edit): the max sees it, a mean of 4
    # dilutes it among noise.
    cells = rng.normal(0, 1, (len(frame), 16))
    cells[labels == 1, 3] += 6.0
    decisions = {f.name: cells[f.held_out] for f in folds}
    chosen = choose(folds, decisions, labels, (1, 4))
    assert chosen["top_k"] == 1
    assert chosen["top_k_roc_auc"]["1"] > chosen["top_k_roc_auc"]["4"]
    scores = top_k_mean(cells, 1)
    assert scores[labels == 0].max() < chosen["threshold"] <= scores[labels == 1].min() + 1e-9
    assert all(v == 1.0 for v in chosen["held_out_balanced_accuracy"].values())
    # The copy rule's verdicts count: with every fake flagged by it, any threshold above the
    # reals is as good, and the chosen one still separates.
    fires = {f.name: labels[f.held_out] == 1 for f in folds}
    assert choose(folds, decisions, labels, (1, 4), fires)["threshold"] > scores[labels == 0].max()


def test_copy_rule_lifts_only_what_it_flags() -> None:
    reals = np.r_[np.zeros(98), 0.003, 0.004]
    assert copyrule.calibrate(reals) == copyrule.FLOOR  # a photo repeats almost nothing
    assert copyrule.calibrate(np.r_[np.zeros(90), np.full(10, 0.2)]) == 0.2
    svm = np.array([-1.0, 2.0, -1.0])
    fused = copyrule.fuse(svm, np.array([0.0, 0.0, 0.105]), svm_threshold=0.5, threshold=0.005)
    assert fused[0] == -1.0 and fused[1] == 2.0  # never lowered, untouched when silent
    assert fused[2] == pytest.approx(0.5 + copyrule.GAIN * 0.1)  # over the SVM's threshold
    cells = np.array([[0.0, 0.0], [-2.0, -2.0]])
    copied = np.array([[0.0, 1.0], [0.0, 1.0]])
    lit = copyrule.fuse_cells(cells, copied, np.array([0.001, 0.5]), threshold=0.01)
    assert np.array_equal(lit[0], cells[0])  # the rule is silent on the first image
    assert lit[1, 0] == -2.0 and lit[1, 1] == pytest.approx(copyrule.GAIN * (1.0 - 0.01))
    partly = copyrule.fuse_cells(np.array([[-2.0]]), np.array([[0.2]]), np.array([0.5]), 0.01)
    assert partly[0, 0] > 0  # a cell a fifth copied, in a flagged image, is over the margin


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The real stages on 10 sample photos (48 px), every mask type and classical method."""
    store = Storage(tmp_path_factory.mktemp("detector"))
    sources = prepare_sources(store, DataConfig(limit=10, image_size=48))
    masks = make_masks(store, MaskConfig(), sources)
    dataset = run_inpaint(store, InpaintConfig(backend="classical"), sources, masks)
    split = split_dataset(store, SplitConfig(test_size=0.3), dataset)
    features = extract_features(store, FeaturesConfig(cells_per_image=8, batch_size=32), split)
    protocols = HeldOut(
        repeats=2, test_size=0.3, leave_one_family_out=True, leave_one_method_out=True
    )
    return store, features, train_detector(store, SVM, features, protocols)


def test_detector_stage_writes_a_loadable_bundle(trained) -> None:
    store, _, out = trained
    meta = store.read_json(f"{out.folder}/{BUNDLE_FILE}")
    search = store.read_json(f"{out.folder}/search.json")
    assert meta["top_k"] in (1, 4) and meta["top_k"] == search["top_k"]
    assert "held-out" in search["threshold_rule"] and np.isfinite(meta["threshold"])
    assert meta["copy_rule"]["threshold"] >= copyrule.FLOOR
    data = store.read_bytes(f"{out.folder}/{MODEL_FILE}")
    model = load_model(data, MODEL_FILE, meta["svm_sha256"])
    assert model.named_steps["svm"].coef_.shape == (1, meta["cell_dim"])
    store.write_bytes(f"{out.folder}/{MODEL_FILE}", data + b"x")
    try:
        with pytest.raises(ValueError, match=rf"{MODEL_FILE}: digest does not match"):
            Detector.load(store, out.folder, device="cpu")
    finally:
        store.write_bytes(f"{out.folder}/{MODEL_FILE}", data)


def test_loaded_detector_scores_as_the_stage_did(trained) -> None:
    store, _, out = trained
    scored = store.read_parquet(out.manifest)
    detector = Detector.load(store, out.folder, device="cpu")
    sample = scored.groupby("label").head(6)
    again = detector.score_uris(store, list(sample["uri"]))
    assert np.allclose(again, sample["score"], atol=1e-3)
    meta = detector.meta
    said = scored["score"].to_numpy() >= meta["threshold"]
    p = probability(scored["score"].to_numpy(), meta["calibration"])
    assert ((p > 0) & (p < 1)).all()
    assert (said == (p >= meta["probability_threshold"] - 1e-12)).all()
    heat = np.asarray(scored["heat"].iloc[0], np.float32)
    assert heat.shape == (36,)  # every cell of the 48 px image (6 x 6 cells of 8 px)


def test_held_out_detectors_never_saw_their_test_records(trained) -> None:
    store, features, out = trained
    frame = store.read_parquet(features.manifest)
    protocols = store.read_json(f"{out.folder}/{PROTOCOLS_FILE}")
    names = [p["name"] for p in protocols]
    assert "split 2" in names and any("without method exemplar" in n for n in names)
    assert any("without family patch" in n for n in names)
    by_id = frame.set_index("record_id")
    for p in protocols:
        test = by_id.loc[p["test_record_ids"]]
        assert len(test) == len(p["test_scores"]) and set(test["label"]) == {0, 1}
        if p["left_out"]:
            column = p["left_out_by"]
            assert set(test.loc[test["label"] == 1, column]) == {p["left_out"]}


def test_platt_calibration_by_hand() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 2000)
    # Decision values drawn so that the true P(y=1 | s) under even odds is sigmoid(2 s).
    s = np.where(y == 1, rng.normal(1, 1, y.size), rng.normal(-1, 1, y.size))
    fit = platt_calibration(y, s)
    assert fit["a"] == pytest.approx(2.0, abs=0.2) and fit["b"] == pytest.approx(0.0, abs=0.15)


def test_model_file_with_foreign_types_is_refused(tmp_path: Path) -> None:
    import skops.io as sio

    data = sio.dumps({"payload": Path("/etc/passwd")})
    with pytest.raises(ValueError, match=r"bundle/svm.skops: refusing untrusted types"):
        load_model(data, "bundle/svm.skops")


def test_model_file_bytes_are_the_same_in_every_process() -> None:
    script = (
        "import hashlib, numpy as np; from deepfake.detector.model import dump_model, cell_svm; "
        "X = np.random.RandomState(0).rand(40, 5); m = cell_svm(0.1, 0).fit(X, [0, 1] * 20); "
        "print(hashlib.sha256(dump_model(m)).hexdigest())"
    )
    digests = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout
        for _ in range(2)
    }
    assert len(digests) == 1 and len(digests.pop().strip()) == 64


def test_parallel_workers_get_only_portable_warning_filters() -> None:
    import warnings

    import torch.jit._trace

    from deepfake.detector.model import _portable_warning_filters

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit._trace.TracerWarning)
        warnings.filterwarnings("ignore", message="keep me", category=UserWarning)
        before = list(warnings.filters)
        with _portable_warning_filters():  # torch categories would make each worker import torch
            modules = {f[2].__module__.split(".")[0] for f in warnings.filters}
            assert "torch" not in modules and "builtins" in modules
            assert any(f[1] is not None and f[1].pattern == "keep me" for f in warnings.filters)
        assert warnings.filters == before


def test_parallel_fit_workers_do_not_load_torch() -> None:
    """Each of the detector's parallel workers imports the module of the fit function it runs;
    torch there would cost ~0.6 GB a worker (skops.io, which imports it, is loaded lazily)."""
    probe = (
        "import numpy as np; from joblib import Parallel, delayed; "
        "from deepfake.detector.training import _fit; "
        "X, y = np.random.default_rng(0).normal(size=(40, 4)), np.arange(40) % 2; "
        "Parallel(n_jobs=2)(delayed(_fit)(X, y, 0.1, 0, 8) for _ in range(2)); "
        "print(Parallel(n_jobs=2)(delayed(eval)(\"'torch' in __import__('sys').modules\") "
        "for _ in range(4)))"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == "[False, False, False, False]", found.stdout + found.stderr
