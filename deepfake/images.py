"""Reading, normalising and encoding images.

Every image that reaches the feature extractor, real or inpainted, is an 8-bit RGB square PNG of
the same side, so that no classifier can learn a format, size or colour-mode shortcut.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# 144 Mpx: beyond any artwork we need. Larger images (a 20000 x 20000 PNG of a few hundred KB,
# say) are refused as possible decompression bombs before their pixels are decoded.
MAX_PIXELS = 12_000 * 12_000
# The largest image file read (bytes): enough for any image under MAX_PIXELS as PNG; a larger
# file is refused unread (data.max_file_bytes for the sources; prediction's inputs too).
MAX_FILE_BYTES = 512 * 2**20


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def decode(data: bytes, name: str) -> Image.Image:
    """Decode ``data`` into an upright RGB image, or raise ImageError naming ``name``."""
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {image.width}x{image.height} pixels is over the limit of "
                    f"{MAX_PIXELS} (possible decompression bomb)"
                )
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(
            f"{name}: not a readable image (unknown format or corrupt header)"
        ) from None
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None
    if image.width < 2 or image.height < 2:
        raise ImageError(f"{name}: image is only {image.width}x{image.height} pixels")
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparency is composited on white, 16-bit depth scaled down."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def square(
    image: Image.Image, side: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    """Centre-crop to a square and resize to ``side`` (Lanczos); no-op when already that size."""
    if image.size == (side, side):
        return image
    short = min(image.size)
    left = (image.width - short) // 2
    top = (image.height - short) // 2
    cropped = image.crop((left, top, left + short, top + short))
    return cropped.resize((side, side), resample)


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 HxW or HxWx3 array as PNG (deterministic bytes for the same pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png_array(data: bytes, name: str) -> np.ndarray:
    """Decode PNG bytes produced by this pipeline into a uint8 array."""
    try:
        return np.asarray(Image.open(io.BytesIO(data)))
    except Exception as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from None


def decode_read(data: bytes | Exception, name: str) -> np.ndarray:
    """One result of ``Storage.read_many``: re-raise its read error, or decode its PNG bytes."""
    if isinstance(data, Exception):
        raise data
    return decode_png_array(data, name)
