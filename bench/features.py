"""Feature-extraction throughput: the pipeline's features stage against a naive loop.

The features are cell features (``deepfake.features.extractor``): every backbone stage's map
pooled over cells of 8 pixels, plus the forensic maps (exact copies, noise residual) per cell.

On the offline default's images (the sample tiles, their classical inpaintings; made once under
``--storage``), at the pipeline's resolution (native), frozen backbone, for each backbone:

- naive: one image at a time: open the PNG with PIL, ToTensor + Normalize, forward, pool each
  stage map over the cells, forensic maps;
- ours: ``deepfake.features.stage.extract_features`` itself (storage reads and PNG decoding in
  a background thread, batches, ``inference_mode``, channels-last, batch norms folded into the
  convolutions), writing its manifest as the stage does;
- forward only: the backbone on batches already in memory (on the device), in the passes the
  extractor makes (``FeatureExtractor.pass_size``): the ceiling.

Ours runs in float32 (the default) and in ``auto`` precision (bfloat16 where the device computes
it natively); the naive loop always in float32. The largest difference between the two paths'
cell features (the stage keeps a sample of each image's cells, in float16) is reported, relative
to each channel's largest value (at least a thousandth of the largest of all channels).
resnet50 runs with random weights when its ImageNet file is not on this machine: speed does not
depend on the weight values. Median of ``--repeats`` (the naive loop, the slowest, once). The
images are those of ``--limit`` sources (60: 600 images, each source with its nine inpaintings),
so that the whole benchmark takes a few minutes on two CPU cores. Prints a table and writes
bench/results/features.json.

    python bench/features.py [--backbones efficientnet_lite0 resnet50] [--repeats 3] [--limit 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from results_file import save
from torchvision.transforms import functional as TF

from deepfake.config import load_settings
from deepfake.features import BACKBONES, FeatureExtractor, WeightsUnavailable
from deepfake.features.forensics import as_batch, forensic_cells
from deepfake.features.stage import cell_matrix, extract_features, with_cells
from deepfake.inpaint import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.sources.stage import prepare_sources
from deepfake.storage import Storage


def with_weights_or_random(name: str) -> tuple[str, str]:
    """A registered backbone name to benchmark, and where its weights came from."""
    try:
        BACKBONES[name].build()
        return name, "ImageNet"
    except WeightsUnavailable:
        import torchvision

        def build() -> torch.nn.Module:
            torch.manual_seed(0)  # every build the same random weights
            model = torchvision.models.get_model(name)
            model.fc = torch.nn.Identity()  # as the registry's resnet builder does
            return model

        random = f"{name}-random"
        BACKBONES[random] = dataclasses.replace(BACKBONES[name], name=random, build=build)
        return random, "random (ImageNet file not on this machine; speed is the same)"


def naive(name: str, paths: list[str], device: torch.device, cell: int) -> list[np.ndarray]:
    """The textbook loop: the backbone as built, one image at a time; (cells, cell_dim) each."""
    spec = BACKBONES[name]
    model = spec.build().eval().to(device)
    out = []
    with torch.no_grad():
        for path in paths:
            image = Image.open(path).convert("RGB")
            grid = (image.height // cell, image.width // cell)
            x = TF.normalize(TF.to_tensor(image), spec.mean, spec.std)[None].to(device)
            pooled = []
            for fmap in spec.stages(model, x):  # the same cell features the pipeline computes
                if fmap.shape[-2] >= grid[0] and fmap.shape[-1] >= grid[1]:
                    pooled.append(F.adaptive_avg_pool2d(fmap, grid))
                else:
                    pooled.append(F.interpolate(fmap, size=grid, mode="bilinear"))
            pooled.append(forensic_cells(as_batch([np.asarray(image)]).to(device), grid))
            cells = torch.cat(pooled, 1)[0].permute(1, 2, 0).cpu().numpy()
            out.append(cells.reshape(-1, cells.shape[-1]))
    return out


def forward_only(extractor: FeatureExtractor, images: list[np.ndarray], batch: int) -> float:
    """Seconds for the (inference) backbone alone on preprocessed batches already on the
    device, in the extractor's passes (``FeatureExtractor.pass_size``: on a CPU, 16 images of
    128 px at a time, as the stage runs them)."""
    batch = min(batch, extractor.pass_size(*images[0].shape[:2]))
    batches = [extractor.preprocess(images[i : i + batch]) for i in range(0, len(images), batch)]
    model = extractor.inference_model(batches[0])
    with (
        torch.inference_mode(),
        torch.autocast(
            extractor.device.type,
            dtype=getattr(torch, extractor.precision),
            enabled=extractor.precision != "float32",
        ),
    ):
        extractor.spec.stages(model, batches[0])  # warm-up
        if extractor.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x in batches:
            extractor.spec.stages(model, x)
        if extractor.device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--storage", default="bench/.data", help="where the images are made")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", nargs="+", default=["float32", "auto"])
    parser.add_argument("--limit", type=int, default=60, help="sources to use (data.limit)")
    parser.add_argument("--out", help="JSON file [bench/results/features.json]")
    args = parser.parse_args()
    # No degraded training copies (features.augment): the cells must be the naive loop's, to
    # compare; augmenting costs about 0.4 ms an image on top.
    overrides = ["inpaint.backend=classical", "features.finetune_epochs=0", "features.augment=0"]
    if args.limit:
        overrides.append(f"data.limit={args.limit}")
    cfg = load_settings(overrides=overrides)
    store = Storage(args.storage)
    sources = prepare_sources(store, cfg.data)
    dataset = run_inpaint(store, cfg.inpaint, sources, make_masks(store, cfg.masks, sources))
    frame = store.read_parquet(dataset.manifest)
    paths = [store.uri(u) for u in frame["uri"]]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    rows = []
    for requested in args.backbones:
        name, weights = with_weights_or_random(requested)
        device = FeatureExtractor(name, device=args.device).device
        cell = cfg.features.cell
        naive(name, paths[:8], device, cell)  # warm-up
        start = time.perf_counter()
        reference = naive(name, paths, device, cell)
        naive_s = [time.perf_counter() - start]
        for precision in args.precisions:
            update = {"backbone": name, "device": args.device, "precision": precision}
            features = cfg.features.model_copy(update=update)
            extractor = FeatureExtractor(name, device=args.device, precision=precision)
            ours_s = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                stage = extract_features(store, features, dataset)
                ours_s.append(time.perf_counter() - start)
                manifest = with_cells(store, stage)
                store.delete(stage.folder)  # the next repeat starts cold again
            cells, _, rows_of = cell_matrix(manifest, reference[0].shape[1])
            position = {uri: i for i, uri in enumerate(frame["uri"])}
            want = np.concatenate([
                reference[position[uri]][np.asarray(index)]
                for uri, index in zip(manifest["uri"], manifest["cell_index"], strict=True)
            ])  # fmt: skip
            # Per channel (the channels' scales differ), but a channel that is all but zero on
            # every image (a dead ReLU of random weights) is measured on the features' own
            # scale: dividing by its 1e-9s made bfloat16's rounding look like 1e5.
            scale = np.maximum(np.abs(want).max(0), 1e-3 * np.abs(want).max())
            gap = float((np.abs(cells - want) / scale).max())
            forward_s = statistics.median(
                forward_only(extractor, images, features.batch_size) for _ in range(args.repeats)
            )
            n = len(paths)
            row = {
                "backbone": requested,
                "weights": weights,
                "device": str(extractor.device),
                "precision": extractor.precision,
                "images": n,
                "resolution": int(images[0].shape[0]),
                "batch_size": features.batch_size,
                "naive_images_per_s": n / statistics.median(naive_s),
                "ours_images_per_s": n / statistics.median(ours_s),
                "forward_only_images_per_s": n / forward_s,
                "max_relative_difference_from_naive": gap,
            }
            row["speedup"] = row["ours_images_per_s"] / row["naive_images_per_s"]
            row["share_of_forward_only"] = (
                row["ours_images_per_s"] / row["forward_only_images_per_s"]
            )
            rows.append(row)
            print(
                f"{requested:18s} {row['device']:4s} {row['precision']:8s} naive "
                f"{row['naive_images_per_s']:6.1f}  ours {row['ours_images_per_s']:6.1f}  "
                f"forward-only {row['forward_only_images_per_s']:6.1f} images/s  -> "
                f"{row['speedup']:.1f}x naive, {row['share_of_forward_only']:.0%} of forward-only; "
                f"max relative difference from naive {gap:.1e}",
                flush=True,
            )
    save(
        Path(args.out).stem if args.out else "features",
        {
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "repeats": args.repeats,
            "rows": rows,
        },
        Path(args.out).parent if args.out else None,
    )


if __name__ == "__main__":
    main()
