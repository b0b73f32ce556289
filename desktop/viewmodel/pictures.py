"""Small image chores of the view models (thumbnails, PNG bytes) with Pillow, so they need no Qt."""

from __future__ import annotations

import io

import numpy as np


def thumbnail(arr: np.ndarray, size: int = 128) -> np.ndarray:
    """Fit an RGB uint8 image into size×size (aspect kept, Lanczos), as RGB uint8."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False))
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im.convert("RGB")).copy()


def encode_png(arr: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False)).save(buf, "PNG")
    return buf.getvalue()
