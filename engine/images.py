"""Reading user images safely: every accepted file becomes H×W×3 uint8 RGB, upright (EXIF honoured).

Refusals are `ImageUnreadable` with a message that says what to do: unreadable or truncated files,
images over 100 megapixels (refused from the header, before any pixel is decoded), unsupported modes.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from engine.errors import ImageUnreadable

MAX_PIXELS = 100_000_000
_SAVE_HINT = "Open it in an image editor and save it again as PNG or JPEG."


def load_image(source: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file (or its bytes) to upright RGB.

    Grayscale is replicated to three channels, RGBA/LA/palette lose their alpha (as the official
    script's `.convert('RGB')`), CMYK is converted, 16-bit images are scaled to 8 bits, and the EXIF
    orientation tag is applied so phone photos stand upright.

    Args:
        source: a file path or the file's bytes.
        max_pixels: refuse larger images (checked from the header, before decoding).

    Returns:
        H×W×3 uint8 RGB, C-contiguous.

    Raises:
        ImageUnreadable: missing, unreadable, truncated, too large or unsupported.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = "the image" if isinstance(source, bytes | bytearray) else str(source)
    if isinstance(source, bytes | bytearray):
        fh: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        fh = Path(source)
        if not fh.exists():
            raise ImageUnreadable(f"{name} does not exist.", "Check the path.")
        if fh.is_dir():
            raise ImageUnreadable(f"{name} is a folder, not an image.", "Choose an image file.")
    try:
        with warnings.catch_warnings():
            # our own size limit applies; PIL's decompression-bomb warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageUnreadable(
                        f"{name} is {w}×{h} ({w * h / 1e6:.0f} megapixels), more than the "
                        f"{max_pixels / 1e6:.0f} megapixel limit.",
                        "Scale it down (a face needs only a few hundred pixels) and try again.",
                    )
                if w == 0 or h == 0:
                    raise ImageUnreadable(f"{name} has no pixels ({w}×{h}).", _SAVE_HINT)
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im), name)
    except ImageUnreadable:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageUnreadable(
            f"{name} is too large to open safely.", "Scale it down and try again."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageUnreadable(f"{name} is not an image file that can be read (unknown or damaged format).",
                              _SAVE_HINT) from exc
    except PermissionError as exc:
        raise ImageUnreadable(f"No permission to read {name}.", "Fix the file's permissions.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated data as OSError("image file is truncated") or "broken data stream"
        raise ImageUnreadable(f"{name} is damaged or truncated and cannot be decoded ({exc}).", _SAVE_HINT) from exc


def _to_rgb(im, name: str) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        # 16-bit grey is 0–65535; a 32-bit integer image of unknown range is stretched into 8 bits
        top = 65535.0 if mode.startswith("I;16") or a.max() <= 65535 else float(a.max())
        g = np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    if mode == "F":
        raise ImageUnreadable(f"{name} is a floating-point image, which is not supported.",
                              "Export it as an 8- or 16-bit PNG or a JPEG.")
    if mode not in ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa"):
        raise ImageUnreadable(f"{name} has the unsupported colour mode {mode}.", _SAVE_HINT)
    if mode == "LAB":
        raise ImageUnreadable(f"{name} uses the Lab colour space, which is not supported.",
                              "Convert it to RGB in an image editor.")
    rgb = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def as_rgb_uint8(image: np.ndarray, *, what: str = "image") -> np.ndarray:
    """Normalise an in-memory image array to H×W×3 uint8 RGB.

    Accepts H×W grey, H×W×1, H×W×3 and H×W×4 (alpha dropped); uint8 as is, uint16 scaled by 1/257,
    float in [0, 1] scaled by 255.

    Raises:
        ImageUnreadable: any other shape or dtype, or non-finite values.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageUnreadable(f"the {what} must be H×W×3 RGB, got shape {tuple(np.shape(image))}.")
    if a.dtype == np.uint16:
        a = np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageUnreadable(f"the {what} contains NaN or infinite values.")
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        raise ImageUnreadable(f"the {what} has dtype {a.dtype}; expected uint8 RGB.")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def save_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG atomically (never a partial file)."""
    from PIL import Image

    from engine.fileio import atomic_write_with

    arr = as_rgb_uint8(image)
    atomic_write_with(path, lambda fh: Image.fromarray(arr, "RGB").save(fh, format="PNG"))
