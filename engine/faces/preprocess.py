"""The e4e input of the official chain (REFERENCE.md §1.3–1.4): mask, blur, resize, white composite.

Every step uses the same library call as the official script so the result is bit-for-bit the same:
PIL's anti-aliased bicubic for both 512→256 resizes, OpenCV's 5×5 Gaussian on the uint8 mask.
"""

from __future__ import annotations

import numpy as np

from engine.errors import InvalidInput

E4E_SIZE = 256
ALIGNED_SIZE = 512
# CelebAMask-HQ labels that the official script paints white: 0 background, 18 cloth.
REMOVED_LABELS = (0, 18)


def removal_mask(labels: np.ndarray) -> np.ndarray:
    """The official "remove" mask of a parsing label map.

    Args:
        labels: H×W integer labels (0–18, CelebAMask-HQ order).

    Returns:
        H×W uint8, 255 where the label is background or cloth, 0 elsewhere.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InvalidInput(f"a label map must be H×W, got shape {lab.shape}.")
    return np.where(np.isin(lab, REMOVED_LABELS), 255, 0).astype(np.uint8)


def soft_mask(mask: np.ndarray, size: int = E4E_SIZE) -> np.ndarray:
    """Blur the uint8 removal mask (OpenCV 5×5, σ from the kernel size) and PIL-resize it to size².

    Args:
        mask: H×W uint8 (255 = remove), normally 512².
        size: output side (256 for e4e).

    Returns:
        size×size float32 in [0, 1].
    """
    import cv2
    from PIL import Image

    m = np.asarray(mask)
    if m.dtype != np.uint8 or m.ndim != 2:
        raise InvalidInput(f"a removal mask must be H×W uint8, got {m.dtype} {m.shape}.")
    blurred = cv2.GaussianBlur(np.ascontiguousarray(m), (5, 5), 0)
    small = Image.fromarray(blurred.astype(np.uint8), "L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(small).astype(np.float32) / np.float32(255.0)


def e4e_image(aligned: np.ndarray, size: int = E4E_SIZE) -> np.ndarray:
    """The aligned face PIL-bicubic-resized to size² and scaled to [-1, 1] (3×size×size float32)."""
    from PIL import Image

    arr = np.asarray(aligned)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInput(f"expected an aligned H×W×3 uint8 RGB face, got {arr.dtype} {arr.shape}.")
    small = Image.fromarray(np.ascontiguousarray(arr), "RGB").resize((size, size), Image.Resampling.BICUBIC)
    x = np.asarray(small).transpose(2, 0, 1).astype(np.float32)
    return (x - np.float32(127.5)) / np.float32(127.5)


def e4e_input(aligned: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The 1×3×256×256 float32 e4e input in [-1, 1], background and clothes whitened when a mask is given.

    Args:
        aligned: the aligned face, 512×512×3 uint8 RGB.
        mask: the 512×512 uint8 removal mask (255 = background/cloth) or None (no whitening).

    Returns:
        1×3×256×256 float32; masked pixels are +1 (white) with a soft 1–2 px edge.
    """
    x = e4e_image(aligned)
    if mask is not None:
        m = soft_mask(mask)
        x = x * (np.float32(1.0) - m) + m
    return np.ascontiguousarray(x[None], dtype=np.float32)
