"""Frame sources: webcams through `engine.capture`, plus still-image and synthetic sources.

Still images are decoded by the engine's decoder (`engine.images.load_image`), so a photo gives the
GUI exactly the pixels it gives `wplus encode` (EXIF orientation, the 100-megapixel limit, modes).

Every source is pull-based: `read(timeout)` returns the next RGB uint8 frame (H×W×3) or None, and
`close()` releases it. The camera thread of `desktop.camera.controller` is the only caller.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.errors import CameraError
from engine.images import load_image

log = logging.getLogger(__name__)


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class FrameSource(Protocol):
    """A source of RGB frames (`drain_messages() -> list[str]` is optional: state changes to show)."""

    def read(self, timeout: float = 1.0) -> np.ndarray | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceChoice:
    """One entry of the camera picker: `spec` is "camera:0", "synthetic" or "file:/path"."""

    spec: str
    label: str


class _Paced:
    """Sleeps so that frames come at most `fps` per second (as a real camera does)."""

    def __init__(self, fps: float) -> None:
        self._period = 1.0 / fps if fps > 0 else 0.0
        self._next = time.perf_counter()

    def wait(self) -> None:
        now = time.perf_counter()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next + self._period, time.perf_counter() - self._period)


class SyntheticSource:
    """A moving test pattern with a face-like oval: demos, tests and the GUI stall benchmark."""

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        self.width, self.height = width, height
        self._pace = _Paced(fps)
        self._t = 0
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self._xx, self._yy = xx, yy
        base = np.empty((height, width, 3), np.float32)
        base[..., 0] = 40 + 30 * yy / height
        base[..., 1] = 44 + 20 * xx / width
        base[..., 2] = 60
        self._base = base

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        self._pace.wait()
        self._t += 1
        cx = self.width / 2 + math.sin(self._t / 20) * self.width / 10
        cy = self.height / 2
        r = ((self._xx - cx) / (self.width * 0.16)) ** 2 + ((self._yy - cy) / (self.height * 0.3)) ** 2
        img = self._base.copy()
        img[r < 1] = (224, 172, 140)
        return img.astype(np.uint8)

    def close(self) -> None:
        pass


class StillSource:
    """Repeats one image (or cycles through a folder of images) at `fps`."""

    def __init__(self, path: str | Path, fps: float = 15.0) -> None:
        p = Path(path)
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg")) if p.is_dir() else [p]
        if not files:
            raise CameraError(f"No images found in {p}.", "Choose a folder with PNG or JPEG photos.")
        self._frames = [load_image(f) for f in files]
        self._pace = _Paced(fps)
        self._i = 0

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        self._pace.wait()
        frame = self._frames[self._i % len(self._frames)]
        self._i += 1
        return frame

    def close(self) -> None:
        self._frames = []


class EngineCaptureSource:
    """Adapts an `engine.capture` FrameSource (webcam or video thread; newest-frame slot, events).

    The engine source retries an absent or unplugged camera by itself; its events become messages.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._seq = -1
        inner.start()

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        frame = self._inner.latest(timeout=timeout, newer_than=self._seq)
        if frame is None:
            return None
        self._seq = frame.index
        return frame.image

    def drain_messages(self) -> list[str]:
        return [f"{ev.message}" for ev in self._inner.drain_events() if str(ev.kind) != "opened"]

    def close(self) -> None:
        self._inner.stop()


def list_sources(cameras: list[Any] | None = None) -> list[SourceChoice]:
    """Picker entries: the probed cameras (or camera 0 until a probe ran), then the test pattern."""
    choices = [SourceChoice(f"camera:{c.index}", f"{c.name} ({c.width}×{c.height})") for c in cameras or []]
    if cameras is None:
        choices.append(SourceChoice("camera:0", "Camera 0"))
    choices.append(SourceChoice("synthetic", "Test pattern"))
    return choices


def probe_cameras() -> list[Any]:
    """The cameras that deliver a frame (slow: opens each one; call off the GUI thread).

    Raises:
        ImportError: webcam support (engine.capture / OpenCV) is not available.
    """
    from desktop.engine_client import capture_backend

    webcam = capture_backend("webcam")
    return list(webcam.list_cameras())


def open_source(spec: str) -> FrameSource:
    """Open the source named by `spec` ("camera:N", "synthetic", "file:PATH").

    Raises:
        CameraError: the camera cannot be opened (with a hint saying what to try).
    """
    if spec == "synthetic":
        return SyntheticSource()
    if spec.startswith("file:"):
        path = Path(spec[5:])
        if path.suffix.lower() in VIDEO_SUFFIXES:
            files = _capture_module("files")
            return EngineCaptureSource(files.VideoFileSource(path, loop=True))
        return StillSource(path)
    if spec.startswith("camera:"):
        index = int(spec.split(":", 1)[1] or 0)
        webcam = _capture_module("webcam")
        return EngineCaptureSource(webcam.WebcamSource(index))
    raise CameraError(f"Unknown camera source {spec!r}.")


def _capture_module(kind: str) -> Any:
    from desktop.engine_client import capture_backend

    try:
        return capture_backend(kind)
    except ImportError as exc:
        raise CameraError(
            f"Webcam and video support is not available in this build ({exc}).",
            "Use File ▸ Open photo, or drop a photo on the window.",
        ) from exc


def qimage_to_rgb(img: Any) -> np.ndarray:
    """Copy an RGB888 QImage into an H×W×3 uint8 array (handles the row padding)."""
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), np.uint8, count=bpl * h).reshape(h, bpl)
    return buf[:, : w * 3].reshape(h, w, 3).copy()
