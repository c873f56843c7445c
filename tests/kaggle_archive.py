"""A small archive with the real DeepfakeArt layout, made from the bundled sample photos.

Each ``similar/inpainting/<id>/`` folder (ids non-contiguous, as in the real dataset) holds a real
``original.png``, an ``inpainting.png`` made by OpenCV's Navier-Stokes inpainting under a centred
ellipse ``mask.png`` (other masks and another method than the pipeline's own, like the
dataset authors' SD2 inpaintings), and a ``group.png`` preview. It also holds the bad cases the
pipeline must survive: members that escape the folder (``..``, an absolute path), a symbolic
link, a corrupt original, and a folder without its original.

    python -m tests.kaggle_archive OUT.zip [--folders 36] [--size 96]

Folders cut from the same photo are separate records here, so numbers measured on this archive
are a smoke test of the code path, not a measurement of the detector.
"""

from __future__ import annotations

import argparse
import io
import stat
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from deepfake.sources.sample import sample_tiles

PREFIX = "similar/inpainting"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def ellipse_mask(side: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((side, side), np.uint8)
    centre = (side // 2 + int(rng.integers(-side // 8, side // 8)), side // 2)
    axes = (int(side * rng.uniform(0.2, 0.35)), int(side * rng.uniform(0.2, 0.35)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return mask


def build_archive(out: str | Path, folders: int = 36, size: int = 96) -> dict[str, list[str]]:
    """Write the archive; returns the ids of good, corrupt and original-less folders."""
    tiles = list(sample_tiles(size, 3))
    step = max(1, len(tiles) // folders)
    chosen = tiles[::step][:folders]
    ids = [str(3 + 7 * i) for i in range(len(chosen))]  # non-contiguous, like the real dataset
    info = {"good": [], "corrupt": [ids[1]], "missing_original": [ids[2]]}
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for fid, (_, _, tile) in zip(ids, chosen, strict=True):
            original = np.asarray(tile)
            mask = ellipse_mask(size, int(fid))
            bgr = cv2.cvtColor(original, cv2.COLOR_RGB2BGR)
            filled = cv2.cvtColor(cv2.inpaint(bgr, mask, 7, cv2.INPAINT_NS), cv2.COLOR_BGR2RGB)
            folder = f"{PREFIX}/{fid}"
            if fid in info["corrupt"]:
                archive.writestr(f"{folder}/original.png", _png(original)[:150])
            elif fid not in info["missing_original"]:
                archive.writestr(f"{folder}/original.png", _png(original))
                info["good"].append(fid)
            archive.writestr(f"{folder}/inpainting.png", _png(filled))
            archive.writestr(f"{folder}/mask.png", _png(mask))
            archive.writestr(f"{folder}/group.png", _png(np.hstack([original, filled])))
        archive.writestr("../escape.png", b"outside the folder")
        archive.writestr("/etc/absolute.png", b"absolute path")
        link = zipfile.ZipInfo(f"{PREFIX}/999/original.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--folders", type=int, default=36)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    info = build_archive(args.out, args.folders, args.size)
    print(f"{args.out}: {len(info['good'])} good folders; corrupt {info['corrupt']}, "
          f"missing original {info['missing_original']}, plus 3 unsafe members")  # fmt: skip


if __name__ == "__main__":
    main()
