"""How the pipeline's cost grows with the data: the stages on folders of 100, 300 and 900 sources
(``--sizes``), each stage's time and peak memory, a growth exponent per stage, and what that
predicts for the original project's scale (5,063 sources x 5 masks = 25,315 inpainted images).

The sources are generated tiles: random 128 px crops of the bundled photographs, flipped, turned
and shifted in colour so that no two are the same image, written to a folder and read by the
``folder`` source (each file its own group). The original project's five masks (four diagonal
halves and the random rectangles), the classical backend, the default features and detector;
the evaluation without its slow protocols (one split, no left-out families, no robustness table):
what grows with the data is the core of the pipeline. Run in one process, stage by stage (the
library's functions, no Prefect), so that each stage's time and memory are its own; memory is the
peak resident set of the process and its children (the detector's parallel fits) while the stage
runs, sampled every 0.1 s.

The growth exponent b of a stage is fitted to t = a n^b over the sizes (least squares on logs);
the extrapolation to 5,063 sources is a n^b per stage. On a GPU only the inpainting and the
backbone change: ``--gpu bench/results/gpu.json`` (what ``bench/gpu.sh`` wrote on a GPU) scales
those two stages by its measured throughput; without it the GPU column says "not measured".

    python bench/scale.py [--sizes 100 300 900] [--storage bench/.data/scale]

Prints a table and writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image
from results_file import save

ORIGINAL_SOURCES = 5063
ORIGINAL_MASKS = 5
FIVE_MASKS = (
    "[diagonal_upper_left,diagonal_upper_right,diagonal_lower_left,diagonal_lower_right,random]"
)
SETTINGS = [
    "data.source=folder",
    f"masks.types={FIVE_MASKS}",
    "inpaint.backend=classical",
    "evaluate.repeats=1",
    "evaluate.leave_one_family_out=false",
    "evaluate.robustness=false",
    "evaluate.shortcut_audit=false",
]
STAGES = ("sources", "masks", "inpainting", "split", "features", "detector", "evaluation")


def make_tiles(folder: Path, count: int, side: int = 128, seed: int = 0) -> None:
    """``count`` distinct tiles from the bundled photographs, as PNG files in ``folder``."""
    from deepfake.images import decode
    from deepfake.sources.sample import SAMPLE_PHOTOS, photo_path

    photos = []
    for _, package, name in SAMPLE_PHOTOS:
        path = photo_path(package, name)
        photos.append(np.asarray(decode(path.read_bytes(), str(path))))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made = 0
    while made < count:
        photo = photos[int(rng.integers(len(photos)))]
        if min(photo.shape[:2]) < side:
            continue
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        tile = np.rot90(photo[y : y + side, x : x + side], int(rng.integers(4)))
        if rng.random() < 0.5:
            tile = tile[:, ::-1]
        if tile.std() < 8:  # flat: no label signal (as the sample source leaves out)
            continue
        shift = rng.integers(-12, 13, 3)
        tile = np.clip(tile.astype(int) + shift, 0, 255).astype(np.uint8)
        Image.fromarray(tile).save(folder / f"tile{made:05d}.png")
        made += 1


class PeakMemory:
    """The peak resident memory (GiB) of this process and its children while in the block."""

    def __enter__(self) -> PeakMemory:
        self.peak, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._done.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
            except psutil.Error:
                continue
            self.peak = max(self.peak, rss)
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.gib = self.peak / 2**30


def run_size(root: Path, size: int) -> dict[str, Any]:
    """Every stage on ``size`` generated sources: seconds and peak GiB per stage."""
    from deepfake.config import load_settings
    from deepfake.detector.settings import HeldOut
    from deepfake.detector.stage import train_detector
    from deepfake.evaluate.stage import evaluate_detector
    from deepfake.features.stage import extract_features
    from deepfake.inpaint import run_inpaint
    from deepfake.masks.stage import make_masks
    from deepfake.sources.stage import prepare_sources
    from deepfake.split import split_dataset
    from deepfake.storage import Storage

    tiles = root / f"tiles-{size}"
    if not tiles.exists():
        make_tiles(tiles, size)
    store = Storage(root / f"storage-{size}")
    overrides = [*SETTINGS, f"data.folder.path={tiles}"]
    cfg = load_settings(overrides=overrides, storage=str(store.root))
    seconds, memory, done = {}, {}, {}
    steps = {
        "sources": lambda: prepare_sources(store, cfg.data),
        "masks": lambda: make_masks(store, cfg.masks, done["sources"]),
        "inpainting": lambda: run_inpaint(store, cfg.inpaint, done["sources"], done["masks"]),
        "split": lambda: split_dataset(store, cfg.split, done["inpainting"]),
        "features": lambda: extract_features(store, cfg.features, done["split"]),
        "detector": lambda: train_detector(store, cfg.svm, done["features"], HeldOut.of(cfg)),
        "evaluation": lambda: evaluate_detector(
            store, cfg, done["sources"], done["inpainting"], done["features"], done["detector"]
        ),  # fmt: skip
    }
    for stage in STAGES:
        with PeakMemory() as peak:
            start = time.perf_counter()
            done[stage] = steps[stage]()
            seconds[stage] = time.perf_counter() - start
        memory[stage] = peak.gib
        print(f"  {size:5d} sources  {stage:10s} {seconds[stage]:7.1f} s  {memory[stage]:5.2f} GiB",
              flush=True)  # fmt: skip
    return {"sources": size, "images": done["inpainting"].records, "seconds": seconds,
            "peak_gib": memory}  # fmt: skip


def growth(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """(a, b) of t = a n^b, least squares on logs."""
    b, log_a = np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-3)), 1)
    return float(np.exp(log_a)), float(b)


def gpu_factors(path: str | None) -> dict[str, float] | None:
    """How much faster a GPU makes the inpainting and the backbone than this CPU, from the
    figures ``bench/gpu.sh`` measured (None when there are none)."""
    if not path or not Path(path).exists():
        return None
    result = json.loads(Path(path).read_text())
    if result.get("dry_run"):
        return None
    sd2 = max(r["images_per_s"] for r in result["sd2"]["rows"])
    features = max(r["ours_images_per_s"] for r in result["features"]["rows"])
    return {"sd2_images_per_s": sd2, "features_images_per_s": features}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 900])
    parser.add_argument("--storage", default="bench/.data/scale")
    parser.add_argument("--gpu", default="bench/results/gpu.json",
                        help="bench/gpu.sh's results, measured on a GPU")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    args = parser.parse_args()
    root = Path(args.storage)
    runs = [run_size(root, size) for size in args.sizes]
    sizes = [r["sources"] for r in runs]
    fits, rows = {}, []
    for stage in STAGES:
        a, b = growth(sizes, [r["seconds"][stage] for r in runs])
        predicted = a * ORIGINAL_SOURCES**b
        fits[stage] = {"a": a, "exponent": b, "original_scale_s": predicted,
                       "peak_gib": [r["peak_gib"][stage] for r in runs]}  # fmt: skip
        rows.append((stage, [r["seconds"][stage] for r in runs], b, predicted,
                     max(r["peak_gib"][stage] for r in runs)))  # fmt: skip
    total = sum(f["original_scale_s"] for f in fits.values())
    gpu = gpu_factors(args.gpu)
    if gpu is not None:  # the two stages a GPU changes, at its measured speed; the rest as here
        fakes = ORIGINAL_SOURCES * ORIGINAL_MASKS
        gpu["hours"] = (
            total
            - fits["inpainting"]["original_scale_s"]
            - fits["features"]["original_scale_s"]
            + fakes / gpu["sd2_images_per_s"]
            + (fakes + ORIGINAL_SOURCES) / gpu["features_images_per_s"]
        ) / 3600
    head = " | ".join(f"{n} sources (s)" for n in sizes)
    print(f"\n| stage | {head} | growth exponent | at 5,063 sources x 5 masks (h, this CPU) "
          f"| peak memory (GiB) |")  # fmt: skip
    print("|---|" + "---|" * (len(sizes) + 3))
    for stage, times, b, predicted, peak in rows:
        cells = " | ".join(f"{t:.1f}" for t in times)
        print(f"| {stage} | {cells} | {b:.2f} | {predicted / 3600:.2f} | {peak:.2f} |")
    on_gpu = (
        "not measured (no bench/gpu.sh results from a GPU)"
        if gpu is None
        else (f"{gpu['hours']:.1f} h (SD2 at {gpu['sd2_images_per_s']:.2f} images/s)")
    )
    print(
        f"\ntotal at the original project's scale (classical fills) on this CPU: "
        f"{total / 3600:.1f} h; with SD2 on one GPU: {on_gpu}"
    )
    save("scale", {"settings": SETTINGS, "runs": runs, "fits": fits,
                   "original_scale": {"sources": ORIGINAL_SOURCES, "masks": ORIGINAL_MASKS,
                                      "cpu_hours": total / 3600, "gpu": gpu}})  # fmt: skip
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
