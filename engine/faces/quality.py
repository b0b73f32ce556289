"""Capture quality gates: size, pose, eyes, sharpness, exposure, border — each with a reason to show.

All measures come from the 68 landmarks and a normalised grey crop of the face, so one call costs
about a millisecond and can run on every preview frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.api import FaceBox, QualityReport
from engine.errors import InvalidInput
from engine.faces.align import face_quad

# A generic 3-D face (millimetres, x right, y up, z towards the camera) for the six landmarks
# nose tip 30, chin 8, outer eye corners 36/45, mouth corners 48/54; the usual head-pose recipe.
_MODEL_3D = np.array(
    [
        (0.0, 0.0, 0.0),
        (0.0, -63.6, -12.5),
        (-43.3, 32.7, -26.0),
        (43.3, 32.7, -26.0),
        (-28.9, -28.9, -24.1),
        (28.9, -28.9, -24.1),
    ],
    dtype=np.float64,
)
_POSE_POINTS = (30, 8, 36, 45, 48, 54)
# The generic model's nose sits deeper than dlib's nose-tip point on real photos, so a frontal face
# reads about +20° of pitch (measured on skimage's astronaut, looking straight at the camera, and
# its mirror image); the reported pitch has this offset removed.
_PITCH_OFFSET = 20.0
_CROP = 128  # faces are measured on a 128² grey crop: sharpness depends on scale, so fix the scale


@dataclass(frozen=True)
class QualityThresholds:
    """Gate limits; the defaults suit a webcam at arm's length.

    Attributes:
        min_quad: the aligned quad must be wider than this (the official `--min_size` 160; the official
            test is "greater than").
        max_yaw, max_pitch: head-pose limits in degrees (e4e expects near-frontal FFHQ faces).
        min_eye_ratio: eye aspect ratio below which an eye counts as closed.
        min_sharpness: variance of the Laplacian of the 128² grey face crop (a sharp
            90 px photo face ≈ 150, σ = 1 px blur ≈ 20).
        min_brightness, max_brightness: mean grey level of the face crop.
        max_clipped: fraction of the crop that is black (≤ 5) or blown out (≥ 250).
        max_outside: fraction of the alignment square outside the image (filled black when aligned).
    """

    min_quad: float = 160.0
    max_yaw: float = 25.0
    max_pitch: float = 20.0
    min_eye_ratio: float = 0.15
    min_sharpness: float = 40.0
    min_brightness: float = 50.0
    max_brightness: float = 210.0
    max_clipped: float = 0.25
    max_outside: float = 0.10


def eye_aspect_ratio(eye: np.ndarray) -> float:
    """(|p2−p6| + |p3−p5|) / (2·|p1−p4|) for the six points of one eye (≈0.3 open, <0.15 closed)."""
    p = np.asarray(eye, dtype=np.float64)
    width = np.linalg.norm(p[0] - p[3])
    if width == 0:
        return 0.0
    return float((np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2.0 * width))


def head_pose(landmarks: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from six landmarks and a generic 3-D face (OpenCV solvePnP).

    Args:
        landmarks: 68×2 points.
        image_size: (height, width) of the image; the focal length is taken as its width.

    Returns:
        Angles in degrees; 0, 0, 0 is a frontal face (pitch corrected by the model's frontal offset). Signs: yaw > 0 turns towards image right,
        pitch > 0 looks up.
    """
    import cv2

    h, w = image_size
    pts = np.asarray(landmarks, dtype=np.float64)[list(_POSE_POINTS)]
    cam = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], dtype=np.float64)
    ok, rvec, _tvec = cv2.solvePnP(_MODEL_3D, pts, cam, np.zeros(4), flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return float("nan"), float("nan"), float("nan")
    rot, _ = cv2.Rodrigues(rvec)
    # The model's y axis points up while the image's points down: flip it to get a proper rotation
    # from the face frame to the camera frame, then read intrinsic angles.
    r = rot @ np.diag([1.0, -1.0, -1.0])
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -r[2, 0]))))
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2])) - _PITCH_OFFSET
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, pitch, roll


def _outside_fraction(corners: np.ndarray, shape: tuple[int, int], n: int = 24) -> float:
    """Share of the quad's area that lies outside the image (sampled on an n×n grid)."""
    h, w = shape
    u = (np.arange(n) + 0.5) / n
    a, b, _c, d = corners  # upper-left, lower-left, lower-right, upper-right
    uu, vv = np.meshgrid(u, u)
    pts = a + uu[..., None] * (d - a) + vv[..., None] * (b - a)
    inside = (pts[..., 0] >= 0) & (pts[..., 0] < w) & (pts[..., 1] >= 0) & (pts[..., 1] < h)
    return float(1.0 - inside.mean())


def _face_crop(image: np.ndarray, box: FaceBox, size: int = _CROP) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    x0, y0 = max(0, int(box.left)), max(0, int(box.top))
    x1, y1 = min(w, math.ceil(box.right)), min(h, math.ceil(box.bottom))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros((size, size), np.uint8)
    grey = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA if x1 - x0 > size else cv2.INTER_LINEAR)


def assess(
    image: np.ndarray, face: FaceBox, thresholds: QualityThresholds | None = None
) -> QualityReport:
    """Check one face against the capture gates.

    Args:
        image: H×W×3 uint8 RGB frame or photo.
        face: the face with its 68 landmarks (from FaceDetector.detect or FaceTracker.update).
        thresholds: gate limits (defaults: `QualityThresholds()`).

    Returns:
        QualityReport: `ok` when every gate passed; `reasons` tell the user what to change;
        `metrics` holds quad_width, yaw, pitch, roll, eye_ratio, sharpness, brightness, clipped, outside.

    Raises:
        InvalidInput: the face has no landmarks or the image is not RGB uint8.
    """
    import cv2

    t = thresholds or QualityThresholds()
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InvalidInput(f"quality needs an H×W×3 uint8 RGB image, got {img.dtype} {img.shape}.")
    if face.landmarks is None:
        raise InvalidInput("the face has no landmarks; detect it with FaceDetector.detect first.")
    lm = np.asarray(face.landmarks, dtype=np.float64)
    quad = face_quad(lm)
    yaw, pitch, roll = head_pose(lm, img.shape[:2])
    ear = min(eye_aspect_ratio(lm[36:42]), eye_aspect_ratio(lm[42:48]))
    crop = _face_crop(img, face)
    sharp = float(cv2.Laplacian(crop, cv2.CV_64F).var())
    bright = float(crop.mean())
    clipped = float(((crop <= 5) | (crop >= 250)).mean())
    outside = _outside_fraction(quad.corners, img.shape[:2])
    metrics = {
        "quad_width": quad.width,
        "yaw": yaw,
        "pitch": pitch,
        "roll": roll,
        "eye_ratio": ear,
        "sharpness": sharp,
        "brightness": bright,
        "clipped": clipped,
        "outside": outside,
    }
    reasons: list[str] = []
    if not quad.width > t.min_quad:
        reasons.append(
            f"face too small ({quad.width:.0f} px, needs more than {t.min_quad:.0f}): move closer or use a "
            "larger photo"
        )
    if not (abs(yaw) <= t.max_yaw):
        reasons.append(f"head turned sideways ({yaw:+.0f}°): look straight at the camera")
    if not (abs(pitch) <= t.max_pitch):
        reasons.append(f"head tilted {'up' if pitch > 0 else 'down'} ({pitch:+.0f}°): look straight ahead")
    if ear < t.min_eye_ratio:
        reasons.append("eyes closed: keep your eyes open")
    if sharp < t.min_sharpness:
        reasons.append(f"image blurry (sharpness {sharp:.0f}): hold still or focus the camera")
    if bright < t.min_brightness:
        reasons.append(f"face too dark (brightness {bright:.0f}): add light in front of you")
    elif bright > t.max_brightness:
        reasons.append(f"face overexposed (brightness {bright:.0f}): reduce the light or exposure")
    if clipped > t.max_clipped:
        reasons.append(f"{clipped:.0%} of the face is clipped black or white: even out the light")
    if outside > t.max_outside:
        reasons.append(f"face too close to the edge ({outside:.0%} of the crop is outside the picture): centre it")
    return QualityReport(ok=not reasons, reasons=tuple(reasons), metrics=metrics)
