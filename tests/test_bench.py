"""The GPU benchmark runs on a GPU only rarely: its dry run here keeps it from rotting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_dry_run_measures_every_part(prefect_api_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
           "PREFECT_API_URL": prefect_api_url}  # fmt: skip
    done = subprocess.run(
        ["bash", "bench/gpu.sh", "--dry-run", "--results", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    parts = {"sd2", "features", "finetune", "end_to_end", "near_copies", "oom"}
    assert result["dry_run"] and parts <= set(result)
    sd2 = result["sd2"]
    assert {(r["compile"], r["batch_size"]) for r in sd2["rows"]} == {
        (False, 1), (False, 2), (True, 1), (True, 2),
    }  # fmt: skip
    assert all(r["images_per_s"] > 0 and r["achieved_tflops"] > 0 for r in sd2["rows"])
    assert sd2["flops"]["unet_step_both"] > 0 and sd2["flops"]["vae"] > 0
    assert "AttnProcessor2_0" in sd2["attention_processors"]  # PyTorch's SDPA
    features = result["features"]["rows"]
    assert {r["precision"] for r in features} >= {"float32"}
    assert all(r["share_of_forward_only"] > 0 and r["max_relative_difference_from_naive"] < 0.05
               for r in features if r["precision"] == "float32")  # fmt: skip
    tune = result["finetune"]
    assert tune["steps"] > 0 and tune["steps_per_s"] > 0 and len(tune["epoch_losses"]) == 2
    assert tune["grad_scaler"] is (tune["precision"] == "float16")
    assert result["end_to_end"]["backend"] == result["end_to_end"]["expected_backend"]
    near = result["near_copies"]
    assert near["rows"] and all(row["ms_per_image"] > 0 for row in near["rows"])
    assert near["same_as_cpu"] and near["cpu_ms_per_image"] > 0
    assert "| near-copy search on cpu, batch 4 |" in done.stdout
    assert "needs CUDA" in result["oom"]["skipped"]
    assert "| SD2 64 px, 2 steps, batch 1 |" in done.stdout


def test_fair_fine_tuning_bench_drops_only_the_left_out_familys_training_fakes(tmp_path) -> None:
    """bench/finetune_protocols.py fine-tunes each protocol on its own training images: the
    split it hands the features stage must lack exactly that family's training fakes."""
    from deepfake.config import DataConfig, InpaintConfig, MaskConfig, SplitConfig
    from deepfake.inpaint.stage import run_inpaint
    from deepfake.masks.stage import make_masks
    from deepfake.sources.stage import prepare_sources
    from deepfake.split import split_dataset
    from deepfake.storage import Storage

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from finetune_protocols import families, without_family
    finally:
        sys.path.remove(str(ROOT / "bench"))
    store = Storage(tmp_path)
    sources = prepare_sources(store, DataConfig(limit=8, image_size=48))
    dataset = run_inpaint(store, InpaintConfig(backend="classical"), sources,
                          make_masks(store, MaskConfig(), sources))  # fmt: skip
    split = split_dataset(store, SplitConfig(test_size=0.3), dataset)
    frame = store.read_parquet(split.manifest)
    assert without_family(store, split, None) == split
    assert families(store, split) == ["learned", "patch", "pde", "postprocessed"]
    for family in families(store, split):
        out = without_family(store, split, family)
        kept = store.read_parquet(out.manifest)
        gone = frame[~frame["record_id"].isin(kept["record_id"])]
        assert len(gone) > 0 and set(gone["split"]) == {"train"}
        assert set(gone["label"]) == {1} and set(gone["family"]) == {family}
        assert len(gone) == ((frame["split"] == "train") & (frame["family"] == family)).sum()
        assert without_family(store, split, family) == out  # the same stage output again


def test_near_copy_search_finds_a_copied_patch_after_jpeg() -> None:
    """bench/near_copies.py's searches (a lead for exemplar fills after JPEG): a 24 px patch
    copied 70 px away survives JPEG 80 as windows whose nearest window is the copy's source,
    and the photo itself, JPEG'd alike, holds few such windows."""
    from PIL import Image

    from deepfake.perturb import jpeg
    from deepfake.sources.sample import SAMPLE_PHOTOS, photo_path

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import near_copies
    finally:
        sys.path.remove(str(ROOT / "bench"))
    _, package, name = next(p for p in SAMPLE_PHOTOS if p[2] == "gravel.png")
    photo = np.asarray(Image.open(photo_path(package, name)).convert("RGB").resize((128, 128)))
    edited = photo.copy()
    edited[80:104, 80:104] = photo[10:34, 10:34]
    for search in ("hashed", "exhaustive"):
        found = {}
        for label, image in (("photo", photo), ("edited", edited)):
            v, rows, cols = near_copies.window_vectors(jpeg(80)(image))
            if search == "hashed":
                best, offset = near_copies.hashed_matches(v, rows, cols)
            else:
                best, offset = near_copies.exhaustive_matches(v, cols)
            found[label] = near_copies.copied_windows(v, rows, cols, best, offset)
        pasted = found["edited"][80:101, 80:101]  # the windows wholly inside the copy
        assert pasted.mean() >= 0.25, search
        shifts = offset.reshape(rows, cols, 2)[80:101, 80:101][pasted]
        assert (shifts == (-70, -70)).all(), search  # ...matched to where it came from
        assert found["photo"].sum() < 0.2 * found["edited"].sum(), search
