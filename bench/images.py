"""Worker image builds: cold, and after a code-only change; and the images' sizes.

- cold: `bash docker/build.sh [--local-base]` after removing both worker images, so that the
  dependency layer is built again (the local base image, if any, is kept unless --no-base);
- code-only change: the same build from a copy of the checkout with one line added to a module,
  which must reuse the dependency layer.

Prints a table and writes bench/results/images.json. Needs a Docker engine (and root with
--local-base).

    python bench/images.py [--local-base] [--no-base]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from results_file import save

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("deepfake-worker:cpu", "deepfake-worker:cuda")


def timed(*command: str, cwd: Path = ROOT) -> tuple[float, str]:
    start = time.monotonic()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True)
    return time.monotonic() - start, result.stdout + result.stderr


def checkout_copy(target: Path) -> Path:
    _, listing = timed("git", "ls-files", "--cached", "--others", "--exclude-standard")
    for rel in listing.split():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target / rel)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local-base", action="store_true", help="build.sh --local-base")
    parser.add_argument("--no-base", action="store_true",
                        help="with --local-base: remove the local base image too")  # fmt: skip
    args = parser.parse_args()
    flags = ["--local-base"] if args.local_base else []
    subprocess.run(["docker", "rmi", "-f", *IMAGES], capture_output=True)
    if args.no_base:
        subprocess.run(["docker", "rmi", "-f", "deepfake-base:bookworm"], capture_output=True)
    subprocess.run(["docker", "image", "prune", "-f"], capture_output=True)
    cold, _ = timed("bash", "docker/build.sh", *flags)
    with tempfile.TemporaryDirectory() as tmp:
        copy = checkout_copy(Path(tmp) / "repo")
        with (copy / "deepfake/images.py").open("a") as handle:
            handle.write("# a code-only change\n")
        code_only, log = timed("bash", str(copy / "docker/build.sh"), *flags)
    reused = "Using cache" in next(s for s in log.split("Step ") if "requirements.txt" in s
                                   and "pip install" in s)  # fmt: skip
    timed("bash", "docker/build.sh", *flags)  # the images of this checkout again
    sizes = {}
    for image in IMAGES:
        info = json.loads(timed("docker", "image", "inspect", image)[1])[0]
        sizes[image] = round(info["Size"] / 1e9, 2)
    result = {
        "build_flags": flags,
        "cold_build_seconds": round(cold, 1),
        "code_only_rebuild_seconds": round(code_only, 1),
        "dependency_layer_reused": reused,
        "image_size_gb": sizes,
    }
    kept = ", local base kept" if args.local_base and not args.no_base else ""
    print("| build of both images | seconds |\n|---|---|")
    print(f"| cold{kept} | {cold:.0f} |\n| after a code-only change | {code_only:.1f} |")
    print(f"dependency layer reused: {reused}; sizes (GB): {sizes}")
    save("images", result)


if __name__ == "__main__":
    main()
