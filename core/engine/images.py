"""Opening images safely, and checking them before training ever starts."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Formats we decode; anything else is rejected up front with a reason.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "MPO"})
MAX_PIXELS = 40_000_000  # 40 Mpx: a 7,300 x 5,500 photo; PIL's own bomb check fires only at twice its 89 Mpx


def is_image_name(path: str | Path) -> bool:
    """True when the file name has an image extension we accept."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def open_rgb(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Decode a path, raw bytes or PIL image into an RGB PIL image."""
    try:
        if isinstance(source, Image.Image):
            img = source
        elif isinstance(source, bytes | bytearray):
            img = Image.open(io.BytesIO(source))
        else:
            img = Image.open(source)
    except Image.DecompressionBombError:
        raise ValueError(f"image is over the {MAX_PIXELS:,} pixel limit") from None
    except UnidentifiedImageError:  # its message names a Python object, not the file
        raise ValueError("not an image in a format we read (PNG, JPEG, BMP, GIF, WebP, TIFF)") from None
    if not isinstance(source, Image.Image) and img.format not in ALLOWED_FORMATS:
        raise ValueError(f"image format {img.format} is not one we read (PNG, JPEG, BMP, GIF, WebP, TIFF)")
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"image is {img.width}x{img.height}, over the {MAX_PIXELS:,} pixel limit")
    return img.convert("RGB")


def image_problem(path: str | Path) -> str | None:
    """Return why an image file cannot be used, or None when it decodes fully."""
    if not is_image_name(path):
        return f"unsupported file type '{Path(path).suffix or '(none)'}'"
    try:
        with Image.open(path) as img:
            if img.format not in ALLOWED_FORMATS:
                return f"unsupported image format {img.format}"
            if img.width * img.height > MAX_PIXELS:
                return f"image is {img.width}x{img.height}, over the {MAX_PIXELS:,} pixel limit"
            img.load()  # decodes every pixel: finds truncated files that verify() lets through
    except Image.DecompressionBombError as exc:
        return f"image over the pixel limit: {exc}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable image: {exc}"
    return None
