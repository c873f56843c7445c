from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deepfake.images import ImageError, decode, encode_png, square
from tests.conftest import png_bytes


def test_rgb_png_and_jpeg_decode(textured: np.ndarray) -> None:
    assert decode(png_bytes(textured), "a.png").mode == "RGB"
    assert decode(png_bytes(textured, fmt="JPEG"), "a.jpg").size == (64, 64)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty file"),
        (b"definitely not an image", "not a readable image"),
    ],
)
def test_unreadable_bytes_name_the_file(data: bytes, problem: str) -> None:
    with pytest.raises(ImageError, match=f"bad.png: {problem}"):
        decode(data, "bad.png")


def test_truncated_png_is_refused(textured: np.ndarray) -> None:
    data = png_bytes(textured)
    with pytest.raises(ImageError, match="cut.png"):
        decode(data[: len(data) // 2], "cut.png")


def test_one_pixel_image_is_refused() -> None:
    with pytest.raises(ImageError, match="1x1"):
        decode(png_bytes(np.zeros((1, 1, 3), np.uint8)), "dot.png")


def test_modes_become_rgb(textured: np.ndarray) -> None:
    rgba = np.dstack([textured, np.zeros(textured.shape[:2], np.uint8)])
    assert np.all(np.asarray(decode(png_bytes(rgba), "clear.png")) == 255)  # transparent -> white
    palette = decode(png_bytes(textured, mode="P"), "p.png")
    grey = decode(png_bytes(textured, mode="L"), "l.png")
    cmyk = io.BytesIO()
    Image.fromarray(textured).convert("CMYK").save(cmyk, format="JPEG")
    assert {palette.mode, grey.mode, decode(cmyk.getvalue(), "c.jpg").mode} == {"RGB"}
    deep = io.BytesIO()
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)).save(deep, "PNG")
    sixteen = np.asarray(decode(deep.getvalue(), "16.png"))
    assert sixteen.dtype == np.uint8 and sixteen.max() > 200


def test_exif_rotation_is_applied(textured: np.ndarray) -> None:
    wide = np.zeros((20, 40, 3), np.uint8)
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode(buffer.getvalue(), "r.jpg").size == (20, 40)


def test_square_crops_centre_and_resizes() -> None:
    thirds = np.zeros((100, 300, 3), np.uint8)
    thirds[:, :100, 0] = 255  # red left, green centre, blue right
    thirds[:, 100:200, 1] = 255
    thirds[:, 200:, 2] = 255
    out = np.asarray(square(Image.fromarray(thirds), 64)).astype(int)
    assert out.shape == (64, 64, 3)
    assert (out[..., 1] >= 250).all() and (out[..., [0, 2]] <= 5).all()  # the centre, all of it
    same = Image.fromarray(np.ones((64, 64, 3), np.uint8))
    assert square(same, 64) is same


def test_png_encoding_is_deterministic(textured: np.ndarray) -> None:
    assert encode_png(textured) == encode_png(textured.copy())
