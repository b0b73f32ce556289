"""numpy ⇄ Qt image helpers (GUI thread or any thread; QImage is thread-safe to build)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
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


def encode_png(arr: np.ndarray) -> bytes:
    ba = QByteArray()
    buf = QBuffer(ba)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    rgb_to_qimage(arr).save(buf, "PNG")
    buf.close()
    return bytes(ba.data())


def thumbnail(arr: np.ndarray, size: int = 128) -> np.ndarray:
    """A square-fitted thumbnail as RGB uint8."""
    from desktop.camera.sources import qimage_to_rgb

    img = rgb_to_qimage(arr).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                    Qt.TransformationMode.SmoothTransformation)
    return qimage_to_rgb(img.convertToFormat(QImage.Format.Format_RGB888))
