"""Canny edge control images, as ControlNet's canny annotator makes them (OpenCV, no torch).

lllyasviel's annotator and controlnet_aux's `CannyDetector` call `cv2.Canny(image, low, high)` on the
RGB image itself (OpenCV takes the strongest gradient over the three channels) with 100/200 by default,
and stack the single-channel edge map into three channels. We do the same at the image's own size;
the engine resizes and crops the control image to the output size.
"""

from __future__ import annotations

import numpy as np

from engine.errors import InvalidInput

DEFAULT_LOW = 100
DEFAULT_HIGH = 200


def canny(image: np.ndarray, low: int = DEFAULT_LOW, high: int = DEFAULT_HIGH) -> np.ndarray:
    """White edges on black, uint8 H×W×3, of an RGB (or grey, or RGBA) uint8 image.

    Raises:
        InvalidInput: not a uint8 image, or thresholds outside 0 ≤ low ≤ high ≤ 1000.
    """
    import cv2  # lazy: the desktop imports this module

    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise InvalidInput(f"canny edges need a uint8 grey or RGB image, got {img.dtype} {img.shape}.")
    if not (0 <= low <= high <= 1000):
        raise InvalidInput(f"canny thresholds must satisfy 0 ≤ low ≤ high ≤ 1000, got {low}/{high}.",
                           "The usual values are 100/200.")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]  # alpha is not an edge
    edges = cv2.Canny(np.ascontiguousarray(img), int(low), int(high))
    return np.ascontiguousarray(np.repeat(edges[..., None], 3, axis=2))
