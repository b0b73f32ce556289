"""FFHQ face alignment exactly as the official W+ adapter script (REFERENCE.md §1.2).

The official recipe builds an oriented square ("quad") from the eye and mouth landmarks, optionally
shrinks the image, crops around the quad, and samples the quad with PIL's QUAD transform at 4096²
before a LANCZOS resize to 512². Padding is disabled there, so any part of the quad outside the image
comes out **black**; that is our default (`mode="official"`) because the identity codes the adapter was
trained on were made that way. `mode="reflect"` follows the original FFHQ/e4e recipe instead (reflect
padding blurred and faded towards the median colour), which looks better for faces near the border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from engine.errors import InvalidInput

OUTPUT_SIZE = 512
TRANSFORM_SIZE = 4096
AlignMode = Literal["official", "reflect"]


@dataclass(frozen=True)
class FaceQuad:
    """The oriented crop square in source pixels.

    Attributes:
        corners: 4×2 float64, source points mapped to the output's upper-left, lower-left,
            lower-right and upper-right corners.
        size: the side length of the square (`qsize` in the official code).
    """

    corners: np.ndarray
    size: float

    @property
    def width(self) -> float:
        """Horizontal extent of the quad: the official `min_size` gate compares this number."""
        return float(self.corners[:, 0].max() - self.corners[:, 0].min())


def face_quad(landmarks: np.ndarray) -> FaceQuad:
    """The FFHQ crop square for 68 dlib landmarks (only the eyes and mouth corners are used).

    Args:
        landmarks: 68×2 (x, y) points in dlib's iBUG-300W order.

    Returns:
        The quad (corners and side length).

    Raises:
        InvalidInput: when the landmarks are not 68×2 finite numbers or are degenerate.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InvalidInput(f"expected 68×2 finite landmarks, got shape {lm.shape}.")
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    # Half-side vector along the face's horizontal axis: the eye line corrected by the eye→mouth
    # direction turned by 90°, so a tilted head still gets an upright crop.
    x = np.array([eye_to_eye[0] + eye_to_mouth[1], eye_to_eye[1] - eye_to_mouth[0]])
    norm = np.hypot(x[0], x[1])
    if norm == 0.0:
        raise InvalidInput("the face landmarks are degenerate (eyes and mouth coincide).")
    x = x / norm
    x = x * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    corners = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return FaceQuad(corners=corners, size=float(np.hypot(*x) * 2))


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    *,
    mode: AlignMode = "official",
    output_size: int = OUTPUT_SIZE,
) -> tuple[np.ndarray, float]:
    """Crop, rotate and scale a face to the FFHQ layout.

    Args:
        image: H×W×3 uint8 RGB (H×W×4 RGBA is accepted and aligned in RGBA like the official code,
            then the alpha channel is dropped).
        landmarks: 68×2 (x, y) dlib landmarks of the face in `image` pixels.
        mode: "official" (black where the quad leaves the image, the W+ adapter's recipe) or
            "reflect" (reflect padding with blur and median fade, the FFHQ/e4e recipe).
        output_size: side of the result; the official chain uses 512.

    Returns:
        (aligned face output_size×output_size×3 uint8 RGB, quad width in pixels of the possibly
        shrunk image — the number the official `--min_size` 160 gate compares).

    Raises:
        InvalidInput: bad image array, landmarks or mode.
    """
    from PIL import Image

    if mode not in ("official", "reflect"):
        raise InvalidInput(f"unknown alignment mode {mode!r}", "Use 'official' or 'reflect'.")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InvalidInput(f"alignment needs an H×W×3 uint8 RGB image, got {arr.dtype} {arr.shape}.")
    quad_obj = face_quad(landmarks)
    quad = quad_obj.corners.copy()
    qsize = quad_obj.size
    img = Image.fromarray(np.ascontiguousarray(arr), "RGBA" if arr.shape[2] == 4 else "RGB")

    # Shrink very large faces first so the 4096² transform does not alias.
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(quad[:, 0].min())),
        int(np.floor(quad[:, 1].min())),
        int(np.ceil(quad[:, 0].max())),
        int(np.ceil(quad[:, 1].max())),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, img.size[0]),
        min(crop[3] + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    if mode == "reflect":
        img, quad = _reflect_pad(img, quad, qsize, border)

    img = img.transform(
        (TRANSFORM_SIZE, TRANSFORM_SIZE),
        Image.Transform.QUAD,
        tuple((quad + 0.5).flatten()),
        Image.Resampling.BILINEAR,
    )
    if output_size < TRANSFORM_SIZE:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    out = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return out, float(quad[:, 0].max() - quad[:, 0].min())


def _reflect_pad(img, quad: np.ndarray, qsize: float, border: int):
    """The FFHQ/e4e padding: reflect, blur towards the border, fade to the median colour."""
    import cv2
    from PIL import Image

    pad: tuple[int, ...] = (
        int(np.floor(quad[:, 0].min())),
        int(np.floor(quad[:, 1].min())),
        int(np.ceil(quad[:, 0].max())),
        int(np.ceil(quad[:, 1].max())),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - img.size[0] + border, 0),
        max(pad[3] - img.size[1] + border, 0),
    )
    if max(pad) <= border - 4:
        return img, quad
    pad = tuple(int(p) for p in np.maximum(pad, int(np.rint(qsize * 0.3))))
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    a = np.pad(a, ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
    h, w, _ = a.shape
    yy, xx = np.ogrid[:h, :w]
    xx = xx.astype(np.float32)
    yy = yy.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        mask = np.maximum(
            1.0 - np.minimum(xx / pad[0], (w - 1 - xx) / pad[2]),
            1.0 - np.minimum(yy / pad[1], (h - 1 - yy) / pad[3]),
        )[..., None]
    sigma = qsize * 0.02
    # scipy's gaussian_filter truncates at 4σ with mirror-reflect borders; cv2 does the same here
    # without pulling scipy into the runtime.
    k = 2 * math.ceil(4.0 * sigma) + 1
    blurred = cv2.GaussianBlur(a, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    a += (blurred - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    a += (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
    out = Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)), "RGB")
    return out, quad + np.array(pad[:2], dtype=np.float64)


def resize_aligned(image: np.ndarray, size: int = OUTPUT_SIZE) -> np.ndarray:
    """An already aligned face brought to size² with PIL bilinear, as the official script does without -n.

    Args:
        image: H×W×3 uint8 RGB.
        size: output side (512).

    Returns:
        size×size×3 uint8 RGB.
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInput(f"expected an H×W×3 uint8 RGB face, got {arr.dtype} {arr.shape}.")
    if arr.shape[:2] == (size, size):
        return arr.copy()
    img = Image.fromarray(np.ascontiguousarray(arr), "RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy()
