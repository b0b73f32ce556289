"""numpy ⇄ Qt image helpers (GUI thread or any thread; QImage is thread-safe to build)."""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QImage, QPixmap


def rgb_to_qimage(arr: np.ndarray) -> QImage:
    """Wrap an H×W×3 (or H×W) uint8 array as an owned QImage copy."""
    a = np.ascontiguousarray(arr)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        a = np.ascontiguousarray(a[..., :3])
    h, w, _ = a.shape
    return QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def rgb_to_pixmap(arr: np.ndarray) -> QPixmap:
    return QPixmap.fromImage(rgb_to_qimage(arr))
