"""Every GPU measurement in one short run (``bench/gpu.sh`` calls this): SD2 inpainting speed,
features against the backbone alone, fine-tuning under autocast, a short end-to-end run that must
choose SD2, and out-of-memory halving for real. Writes ``bench/results/gpu.json`` (``--dry-run``:
``gpu-dry-run.json``) and prints one table.

- **sd2**: images/s at 512x512, 50 steps, guidance 7.5, batch sizes 1, 4, 8, 16, float16, without
  and with ``torch.compile`` of the UNet, through the product's backend (``SD2Inpainter``); the
  full-size SD2 inpainting architecture with random weights (speed does not depend on them); peak
  GPU memory; and the share of the GPU's peak dense float16 throughput reached: FLOPs of one UNet
  step (counted by ``torch.utils.flop_counter`` at batch 1) x steps x 2 (guidance) plus the VAE,
  over the wall time.
- **features**: ``bench/features.py`` on the offline default's images (the stage against the
  backbone alone on preloaded tensors, float32 and ``auto``).
- **finetune**: steps/s of ``deepfake.features.finetune`` under the device's autocast precision
  (with the GradScaler only for float16), and the loss of each epoch (it must fall).
- **end_to_end**: ``python flows/main.py`` with the tiny local SD2 pipeline, ``data.limit`` small,
  ``inpaint.backend=auto``: on CUDA it must choose sd2.
- **near_copies**: the near-copy search (``features.near_copies``) on the device against the CPU:
  ms an image of 128 px at batch sizes 16 and 64, and whether it marks the same windows (the
  figure that decides whether it can run by default: on 2 CPU cores it costs about 20 ms, which
  makes a cold default 1.5x slower).
- **oom**: a batch too large for a memory cap (``torch.cuda.set_per_process_memory_fraction``) at
  a large resolution: the backend halves the batch and finishes.

``--dry-run`` runs the same code on the CPU with tiny sizes (a tiny random pipeline at 64 px, 2
steps, a few images), in under 3 minutes: the test suite runs it so that the script cannot rot
between the rare runs on a GPU. Measurements that need CUDA say so in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_file import RESULTS, save

ROOT = Path(__file__).resolve().parents[1]
# Peak dense float16 tensor throughput (TFLOP/s, without sparsity) from NVIDIA's data sheets.
PEAK_FP16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
                    "H100": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # fmt: skip


def peak_tflops(name: str) -> float | None:
    for key in sorted(PEAK_FP16_TFLOPS, key=len, reverse=True):
        if key.replace(" ", "").lower() in name.replace(" ", "").lower():
            return PEAK_FP16_TFLOPS[key]
    return None


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pipeline_flops(pipe: Any, side: int) -> dict[str, float]:
    """FLOPs of one UNet call on one image (with its guidance twin: batch 2) and of one VAE
    encode + decode at ``side`` pixels, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae = pipe.unet, pipe.vae
    latent = side // 8
    dtype, device = unet.dtype, unet.device
    sample = torch.randn(2, unet.config.in_channels, latent, latent, dtype=dtype, device=device)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=dtype, device=device)
    image = torch.randn(1, 3, side, side, dtype=vae.dtype, device=device)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as unet_count:
            unet(sample, torch.tensor(10, device=device), encoder_hidden_states=text)
        with FlopCounterMode(display=False) as vae_count:
            latents = vae.encode(image).latent_dist.mean
            vae.decode(latents)
    return {"unet_step_both": float(unet_count.get_total_flops()),
            "vae": float(vae_count.get_total_flops())}  # fmt: skip


def bench_sd2(dry: bool, tmp: Path) -> dict[str, Any]:
    from deepfake.inpaint.random_pipeline import build_random_pipeline
    from deepfake.inpaint.sd2 import SD2Config, SD2Inpainter, release_pipelines
    from deepfake.masks.shapes import make_mask

    cuda = torch.cuda.is_available() and not dry
    size, side, steps = ("full", 512, 50) if cuda else ("tiny", 64, 2)
    batches = (1, 4, 8, 16) if cuda else (1, 2)
    model = str(build_random_pipeline(tmp / f"sd2-{size}", size))
    device = "cuda" if cuda else "cpu"
    rng = np.random.default_rng(0)
    rows = []
    flops = None
    for compiled in (False, True):
        backend = SD2Inpainter(SD2Config(model=model, steps=steps, resolution=side, device=device,
                                         guidance_scale=7.5, compile=compiled))  # fmt: skip
        pipe = backend.pipeline()
        if flops is None:
            flops = pipeline_flops(pipe, side)
        for batch in batches:
            backend.max_batch = batch
            images = [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(batch)]
            masks = [make_mask("ellipse", side, side, f"b{i}", 0) for i in range(batch)]
            start = time.perf_counter()
            backend.inpaint(images, masks, list(range(batch)))  # warm-up (and compilation)
            synchronize()
            warm = time.perf_counter() - start
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            backend.inpaint(images, masks, list(range(batch)))
            synchronize()
            seconds = time.perf_counter() - start
            per_image = flops["unet_step_both"] * steps + flops["vae"]
            achieved = batch * per_image / seconds / 1e12
            peak = peak_tflops(torch.cuda.get_device_name()) if cuda else None
            rows.append({
                "compile": compiled, "batch_size": batch, "seconds": round(seconds, 3),
                "images_per_s": round(batch / seconds, 3), "first_call_s": round(warm, 1),
                "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if cuda else None,
                # Unrounded: the dry run's tiny model does well under 0.01 TFLOP/s.
                "achieved_tflops": float(f"{achieved:.4g}"),
                "share_of_peak_fp16": round(achieved / peak, 3) if peak else None,
            })  # fmt: skip
            print(f"sd2 compile={compiled!s:5} batch {batch:>2}: {batch / seconds:7.2f} images/s, "
                  f"{achieved:7.1f} TFLOP/s", flush=True)  # fmt: skip
        release_pipelines()
    attention = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    return {"model": f"random weights, {size} SD2 inpainting architecture", "resolution": side,
            "steps": steps, "guidance_scale": 7.5, "dtype": str(pipe.unet.dtype),
            "attention_processors": attention, "flops": flops, "rows": rows}  # fmt: skip


def bench_features(dry: bool, results: Path) -> dict[str, Any]:
    out = results / ("features-dry-run.json" if dry else "features.json")
    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    storage = Path(tempfile.gettempdir()) / f"deepfake-bench-{device}"
    command = [sys.executable, "bench/features.py", "--device", device, "--repeats",
               "1" if dry else "3", "--out", str(out), "--storage", str(storage)]  # fmt: skip
    if dry:
        command += ["--limit", "6", "--backbones", "efficientnet_lite0"]
    subprocess.run(command, cwd=ROOT, check=True)
    return json.loads(out.read_text())


def bench_finetune(dry: bool) -> dict[str, Any]:
    from deepfake.features.extractor import FeatureExtractor, resolve_precision
    from deepfake.features.finetune import finetune
    from deepfake.inpaint.classical import ClassicalConfig, ClassicalInpainter
    from deepfake.masks.shapes import make_mask
    from deepfake.sources.sample import SAMPLE_PHOTOS, photo_path

    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    precision = resolve_precision("auto", torch.device(device))
    extractor = FeatureExtractor("efficientnet_lite0", device=device, precision=precision)
    from PIL import Image

    side, count = 128, (16 if dry else 256)
    tiles = []
    for _, package, name in SAMPLE_PHOTOS:
        photo = np.asarray(Image.open(photo_path(package, name)).convert("RGB"))
        for top in range(0, photo.shape[0] - side + 1, side):
            for left in range(0, photo.shape[1] - side + 1, side):
                tiles.append(photo[top : top + side, left : left + side].copy())
    tiles = tiles[: count // 2]
    fill = ClassicalInpainter(ClassicalConfig(methods=("telea",)))
    masks = [make_mask("ellipse", side, side, f"t{i}", 0) for i in range(len(tiles))]
    fakes = fill.inpaint(tiles, masks, list(range(len(tiles))))
    images = [*tiles, *fakes]
    labels = np.r_[np.zeros(len(tiles)), np.ones(len(fakes))].astype(int)
    epochs, batch = (2, 8) if dry else (4, 32)
    steps = epochs * -(-len(images) // batch)
    start = time.perf_counter()

    def load(kept: list[int]) -> tuple[list[int], list[np.ndarray], list[None]]:
        return kept, [images[i] for i in kept], [None] * len(kept)

    losses = finetune(extractor, load, labels, epochs=epochs, lr=1e-4, batch_size=batch, seed=0)
    synchronize()
    seconds = time.perf_counter() - start
    print(f"finetune {precision}: {steps / seconds:.2f} steps/s, losses {losses}", flush=True)
    return {"device": device, "precision": precision, "grad_scaler": precision == "float16",
            "images": len(images), "batch_size": batch, "epochs": epochs, "steps": steps,
            "steps_per_s": round(steps / seconds, 3), "epoch_losses": losses,
            "loss_fell": bool(losses[-1] < losses[0])}  # fmt: skip


def bench_end_to_end(dry: bool, tmp: Path) -> dict[str, Any]:
    from deepfake.inpaint.random_pipeline import build_random_pipeline

    model = build_random_pipeline(tmp / "sd2-e2e", "tiny")
    storage = tmp / "e2e-storage"
    settings = ["inpaint.backend=auto", f"inpaint.sd2.model={model}", "inpaint.sd2.steps=2",
                "inpaint.sd2.resolution=64", "data.limit=12", "data.image_size=64",
                "masks.types=[random,ellipse]", "evaluate.robustness=false",
                "evaluate.leave_one_family_out=false", "evaluate.shortcut_audit=false",
                "evaluate.repeats=1", "evaluate.bootstrap=50", "svm.alpha=[0.1]"]  # fmt: skip
    env = {**os.environ}
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "flows/main.py", "--storage", str(storage),
         *sum((["--set", s] for s in settings), [])],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"flows/main.py failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    metrics = json.loads((Path(summary["report"]) / "metrics.json").read_text())
    chose = metrics["inpaint_backend"]
    cuda = torch.cuda.is_available() and not dry
    print(f"end to end: backend {chose} in {seconds:.0f} s", flush=True)
    if cuda and chose != "sd2":
        raise RuntimeError(f"on CUDA, auto chose {chose!r}: {metrics['inpaint_backend_note']}")
    return {"wall_s": round(seconds, 1), "backend": chose,
            "note": metrics["inpaint_backend_note"], "roc_auc": metrics["roc_auc"],
            "expected_backend": "sd2" if cuda else "classical"}  # fmt: skip


def bench_near_copies(dry: bool) -> dict[str, Any]:
    from PIL import Image

    from deepfake.features.forensics import as_batch
    from deepfake.features.near_copies import near_copy_maps
    from deepfake.sources.sample import SAMPLE_PHOTOS, photo_path

    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    photos = [np.asarray(Image.open(photo_path(package, name)).convert("RGB").resize((128, 128)))
              for _, package, name in SAMPLE_PHOTOS]  # fmt: skip
    sizes = (4,) if dry else (16, 64)
    batches = {size: as_batch([photos[i % len(photos)] for i in range(size)]) for size in sizes}

    def ms_per_image(batch: torch.Tensor, on: str, repeats: int) -> float:
        batch = batch.to(on)
        near_copy_maps(batch)  # warm-up: allocations, kernels
        if on == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            near_copy_maps(batch)
        if on == "cuda":
            torch.cuda.synchronize()
        return round(1000 * (time.perf_counter() - start) / repeats / len(batch), 2)

    rows = [{"batch_size": size, "ms_per_image": ms_per_image(batch, device, 1 if dry else 5)}
            for size, batch in batches.items()]  # fmt: skip
    first = batches[sizes[0]]
    on_device = near_copy_maps(first.to(device)).cpu().flatten(1).mean(1)
    on_cpu = near_copy_maps(first).flatten(1).mean(1)
    print(f"near copies on {device}: {rows}", flush=True)
    return {"device": device, "rows": rows,
            "cpu_ms_per_image": ms_per_image(first, "cpu", 1),
            "same_as_cpu": bool(torch.equal(on_device, on_cpu)),
            "max_share_difference": float((on_device - on_cpu).abs().max())}  # fmt: skip


def bench_oom(dry: bool, tmp: Path) -> dict[str, Any]:
    if dry or not torch.cuda.is_available():
        return {
            "skipped": "needs CUDA: the memory cap is torch.cuda.set_per_process_memory_fraction"
        }
    import logging

    from deepfake.inpaint.random_pipeline import build_random_pipeline
    from deepfake.inpaint.sd2 import SD2Config, SD2Inpainter
    from deepfake.masks.shapes import make_mask

    model = str(build_random_pipeline(tmp / "sd2-full", "full"))
    side, batch = 1024, 16
    backend = SD2Inpainter(SD2Config(model=model, steps=2, resolution=side, device="cuda"), batch)
    backend.pipeline()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = 24 * 2**30  # a 24 GiB card: a batch of 16 at 1024 px does not fit
    torch.cuda.set_per_process_memory_fraction(cap / total)
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logging.getLogger("deepfake").addHandler(Keep())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(batch)]
    masks = [make_mask("random", side, side, f"o{i}", 0) for i in range(batch)]
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = backend.inpaint(images, masks, list(range(batch)))
    seconds = time.perf_counter() - start
    torch.cuda.set_per_process_memory_fraction(1.0)
    halvings = [m for m in messages if "out of GPU memory" in m]
    print(f"oom: {len(out)} images, batch {batch} -> {backend.max_batch}: {halvings}", flush=True)
    return {"resolution": side, "requested_batch": batch, "memory_cap_gib": cap / 2**30,
            "final_batch": backend.max_batch, "halvings": halvings, "images": len(out),
            "seconds": round(seconds, 1),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    lines = ["| measurement | value |", "|---|---|"]
    for row in result["sd2"]["rows"]:
        share = row["share_of_peak_fp16"]
        lines.append(
            f"| SD2 {result['sd2']['resolution']} px, {result['sd2']['steps']} steps, batch "
            f"{row['batch_size']}{', compiled' if row['compile'] else ''} | "
            f"{row['images_per_s']} images/s, {row['achieved_tflops']} TFLOP/s"
            + (f" ({share:.0%} of peak fp16)" if share else "")
            + (f", peak {row['peak_gpu_gib']} GiB" if row["peak_gpu_gib"] else "")
            + " |"
        )
    for row in result["features"]["rows"]:
        lines.append(
            f"| features {row['backbone']} {row['precision']} on {row['device']} | "
            f"{row['ours_images_per_s']:.0f} images/s, {row['share_of_forward_only']:.0%} of the "
            f"backbone alone ({row['forward_only_images_per_s']:.0f}) |"
        )
    tune = result["finetune"]
    lines.append(f"| fine-tuning ({tune['precision']}, GradScaler {tune['grad_scaler']}) | "
                 f"{tune['steps_per_s']} steps/s, epoch losses "
                 f"{', '.join(f'{v:.3f}' for v in tune['epoch_losses'])} |")  # fmt: skip
    e2e = result["end_to_end"]
    lines.append(f"| end to end (auto backend) | chose {e2e['backend']}, {e2e['wall_s']} s |")
    near = result["near_copies"]
    for row in near["rows"]:
        lines.append(
            f"| near-copy search on {near['device']}, batch {row['batch_size']} | "
            f"{row['ms_per_image']} ms an image (CPU {near['cpu_ms_per_image']}), the same marks "
            f"as the CPU's: {near['same_as_cpu']} (shares {near['max_share_difference']:.4f} "
            "apart at most) |"
        )
    oom = result["oom"]
    lines.append(
        "| out-of-memory halving | "
        + (oom["skipped"] if "skipped" in oom else
           f"batch {oom['requested_batch']} -> {oom['final_batch']} at {oom['resolution']} px "
           f"under a {oom['memory_cap_gib']:.0f} GiB cap, {oom['images']} images done")
        + " |"
    )  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (CI)")
    parser.add_argument("--only", nargs="+", help="run only these parts")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    parts = ["sd2", "features", "finetune", "end_to_end", "near_copies", "oom"]
    chosen = args.only or parts
    result: dict[str, Any] = {
        "dry_run": args.dry_run,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        steps = {"sd2": lambda: bench_sd2(args.dry_run, Path(tmp)),
                 "features": lambda: bench_features(args.dry_run, args.results),
                 "finetune": lambda: bench_finetune(args.dry_run),
                 "end_to_end": lambda: bench_end_to_end(args.dry_run, Path(tmp)),
                 "near_copies": lambda: bench_near_copies(args.dry_run),
                 "oom": lambda: bench_oom(args.dry_run, Path(tmp))}  # fmt: skip
        for part in parts:
            if part in chosen:
                begun = time.perf_counter()
                result[part] = steps[part]()
                result[part]["part_seconds"] = round(time.perf_counter() - begun, 1)
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    save("gpu-dry-run" if args.dry_run else "gpu", result, args.results)
    if set(parts) <= set(result):
        print(table(result))
    print(f"total {result['total_seconds']} s")


if __name__ == "__main__":
    main()
