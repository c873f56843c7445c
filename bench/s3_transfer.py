"""Many small images to and from S3: a naive one-request-at-a-time loop against the storage
layer's batched, concurrent path, on a local S3 endpoint (moto's server on loopback).

    python bench/s3_transfer.py [--images 1000] [--repeats 3]

Needs the dev extras (moto). Prints a table and writes bench/results/s3_transfer.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import boto3
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepfake.storage import Storage  # noqa: E402
from tests.s3_server import FaultyProxy, moto_process  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LATENCY = 0.02  # seconds per request: a same-region S3 round trip is of this order


def images(count: int) -> dict[str, bytes]:
    """``count`` noisy 180x180 PNGs, about 100 KB each."""
    rng = np.random.default_rng(0)
    out = {}
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (180, 180, 3), dtype=np.uint8)).save(buffer, "PNG")
        out[f"images/{i:05d}.png"] = buffer.getvalue()
    return out


def timed(fn, *args) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def write_one_by_one(store: Storage, files: dict[str, bytes]) -> None:
    for uri, data in files.items():
        store.write_bytes(uri, data)


def read_one_by_one(store: Storage, uris: list[str]) -> None:
    for uri in uris:
        store.read_bytes(uri)


def measure(
    endpoint: str, files: dict[str, bytes], uris: list[str], repeats: int, label: str
) -> dict[str, object]:
    rows = []
    for repeat in range(repeats):
        naive = Storage(f"s3://bench/{label}/naive{repeat}", endpoint_url=endpoint)
        batched = Storage(f"s3://bench/{label}/batched{repeat}", endpoint_url=endpoint)
        rows.append(
            {
                "naive_write_s": timed(write_one_by_one, naive, files),
                "batched_write_s": timed(batched.write_many, files),
                "naive_read_s": timed(read_one_by_one, naive, uris),
                "batched_read_s": timed(batched.read_many, uris),
            }
        )
    medians = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    return {
        "median_seconds": {k: round(v, 3) for k, v in medians.items()},
        "speedup": {
            op: round(medians[f"naive_{op}_s"] / medians[f"batched_{op}_s"], 2)
            for op in ("write", "read")
        },
        "repeats": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "s3_transfer.json"))
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    files = images(args.images)
    uris = list(files)
    size = statistics.mean(len(v) for v in files.values())
    results = {}
    with moto_process() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        for label, delay in (("loopback", 0.0), (f"{LATENCY * 1000:.0f} ms latency", LATENCY)):
            with FaultyProxy(endpoint, delay=delay) as proxy:
                results[label] = measure(proxy.url, files, uris, args.repeats, label)
    result = {
        "benchmark": "s3_transfer",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "settings": {
            "images": args.images,
            "mean_bytes": round(size),
            "repeats": args.repeats,
            "endpoint": "moto server (own process) on 127.0.0.1, behind a proxy adding latency",
        },
        "results": results,
    }
    print(f"{args.images} images of {size / 1024:.0f} KiB, local S3 endpoint, median of "
          f"{args.repeats}")  # fmt: skip
    print(f"{'':22}{'naive s':>9}{'batched s':>11}{'speedup':>9}")
    for label, res in results.items():
        med = res["median_seconds"]
        for op in ("write", "read"):
            naive_s, batched_s = med[f"naive_{op}_s"], med[f"batched_{op}_s"]
            print(
                f"{label + ' ' + op:22}{naive_s:9.2f}{batched_s:11.2f}{naive_s / batched_s:8.1f}x"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
