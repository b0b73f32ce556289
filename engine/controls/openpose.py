"""OpenPose (COCO-18) body skeletons drawn as the ControlNet openpose models were trained to read them.

No detector: the keypoints come from the app's pose editor (or a preset). The drawing follows
controlnet_aux's `draw_bodypose`/`draw_facepose` (the renderer of lllyasviel's ControlNet annotator,
itself after CMU OpenPose): on a black canvas, each of the 17 limbs is an ellipse from
`cv2.ellipse2Poly` with half-width 4 filled with 0.6 × its colour; then each joint is a filled circle
of radius 4 in its full colour; face points are white filled circles of radius 3. The 18 colours are
OpenPose's rainbow; limb i takes colour i. The two shoulder–ear pairs of OpenPose's list are not drawn
(controlnet_aux draws the first 17 limbs only), so we leave them out too.

Coordinates are normalised: x in [0, 1] across the width, y in [0, 1] down the height, so a pose
renders at any output size. Keypoint order (COCO-18): see `KEYPOINTS`; "right" is the person's right,
which is the image's left for a person facing the camera.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine.errors import InvalidInput

KEYPOINTS = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
N_KEYPOINTS = len(KEYPOINTS)
N_FACE_POINTS = 68  # dlib / iBUG-300W order

# controlnet_aux's limbSeq (1-based there), first 17 entries, as 0-based keypoint pairs
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
STICK_WIDTH = 4  # the ellipse's half-width in pixels
LIMB_ALPHA = 0.6  # limbs are drawn at 0.6 × their colour (over black: alpha 0.6)
JOINT_RADIUS = 4
FACE_RADIUS = 3
FACE_COLOR = (255, 255, 255)

# dlib 68-point indices of the eyes (the person's right eye is 36–41, image left when facing us)
_DLIB_RIGHT_EYE = slice(36, 42)
_DLIB_LEFT_EYE = slice(42, 48)

Point = tuple[float, float]


def limb_color(i: int) -> tuple[int, int, int]:
    """The RGB a limb is filled with (0.6 × its colour, truncated as controlnet_aux does)."""
    return tuple(int(float(c) * LIMB_ALPHA) for c in COLORS[i])  # type: ignore[return-value]


def _point(p: Any, what: str) -> Point | None:
    if p is None:
        return None
    try:
        x, y = (float(v) for v in p)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be an (x, y) pair or null, got {p!r}.") from exc
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InvalidInput(f"{what} must be finite, got ({x}, {y}).")
    return (x, y)


@dataclass(frozen=True)
class Pose:
    """One person's 18 body keypoints (None: not visible) and optional 68 face points, normalised.

    Immutable: every edit returns a new Pose.
    """

    points: tuple[Point | None, ...] = (None,) * N_KEYPOINTS
    face: tuple[Point, ...] = ()

    def __post_init__(self) -> None:
        pts = tuple(self.points)
        if len(pts) != N_KEYPOINTS:
            raise InvalidInput(f"a pose has {N_KEYPOINTS} keypoints (COCO-18), got {len(pts)}.")
        object.__setattr__(self, "points", tuple(_point(p, f"keypoint {KEYPOINTS[i]}") for i, p in enumerate(pts)))
        face = tuple(self.face)
        if face and len(face) != N_FACE_POINTS:
            raise InvalidInput(f"face points come as the {N_FACE_POINTS} dlib landmarks, got {len(face)}.")
        checked = tuple(_point(p, f"face point {i}") for i, p in enumerate(face))
        if any(p is None for p in checked):
            raise InvalidInput("face points cannot be missing one by one; leave the face out instead.")
        object.__setattr__(self, "face", checked)

    def moved(self, index: int, x: float, y: float) -> Pose:
        """This pose with keypoint `index` at (x, y) (a missing keypoint becomes visible)."""
        pts = list(self.points)
        pts[index] = (float(x), float(y))
        return replace(self, points=tuple(pts))

    def without(self, index: int) -> Pose:
        """This pose with keypoint `index` missing (its limbs are not drawn)."""
        pts = list(self.points)
        pts[index] = None
        return replace(self, points=tuple(pts))

    def with_face(self, face: Iterable[Sequence[float]] | None) -> Pose:
        return replace(self, face=() if face is None else tuple((float(x), float(y)) for x, y in face))

    def nearest(self, x: float, y: float, radius: float, aspect: float = 1.0) -> int | None:
        """The visible keypoint nearest to (x, y) within `radius` (normalised by the height), or None.

        `aspect` is width / height, so distances are measured in pixels' proportions.
        """
        best, best_d = None, radius
        for i, p in enumerate(self.points):
            if p is None:
                continue
            d = math.hypot((p[0] - x) * aspect, p[1] - y)
            if d <= best_d:
                best, best_d = i, d
        return best

    def to_dict(self) -> dict[str, Any]:
        return {"format": "openpose-coco18", "keypoints": [None if p is None else [p[0], p[1]] for p in self.points],
                "face": [[x, y] for x, y in self.face]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pose:
        if not isinstance(d, dict) or d.get("format") != "openpose-coco18" or "keypoints" not in d:
            raise InvalidInput("not a pose: expected {\"format\": \"openpose-coco18\", \"keypoints\": [...]}.")
        return cls(tuple(d["keypoints"]), tuple(d.get("face") or ()))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Pose:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"the pose is not valid JSON: {exc}.") from exc
        return cls.from_dict(d)


def render(pose: Pose, width: int, height: int) -> np.ndarray:
    """The OpenPose control image of `pose`: uint8 height×width×3 RGB on black."""
    import cv2  # lazy: the desktop imports this module for the Pose type and presets

    if width < 1 or height < 1:
        raise InvalidInput(f"a control image needs a positive size, got {width}×{height}.")
    canvas = np.zeros((height, width, 3), np.uint8)
    pts = pose.points
    for i, (a, b) in enumerate(LIMBS):
        pa, pb = pts[a], pts[b]
        if pa is None or pb is None:
            continue
        xs = (pa[0] * width, pb[0] * width)
        ys = (pa[1] * height, pb[1] * height)
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly((int(sum(xs) / 2), int(sum(ys) / 2)), (int(length / 2), STICK_WIDTH),
                                   int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, np.asarray(polygon, np.int32), limb_color(i))
    for i, p in enumerate(pts):
        if p is not None:
            cv2.circle(canvas, (int(p[0] * width), int(p[1] * height)), JOINT_RADIUS, COLORS[i], thickness=-1)
    for fx, fy in pose.face:
        x, y = int(fx * width), int(fy * height)
        if x > 0 and y > 0:  # controlnet_aux skips points at the origin (undetected ones)
            cv2.circle(canvas, (x, y), FACE_RADIUS, FACE_COLOR, thickness=-1)
    return canvas


def pose_from_image(image: np.ndarray) -> Pose:
    """Read the body keypoints back from an OpenPose image drawn with the standard colours.

    Each joint is the only disc in its full colour (limbs are at 0.6 ×), so the centroid of the pixels
    of exactly that colour is the keypoint (to within a pixel; a joint hidden by a later one is lost).
    Face points are not recovered (they are all white and unordered).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InvalidInput(f"an OpenPose image is H×W×3 uint8 RGB, got {img.dtype} {img.shape}.")
    h, w = img.shape[:2]
    pts: list[Point | None] = []
    for color in COLORS:
        ys, xs = np.nonzero(np.all(img == np.asarray(color, np.uint8), axis=2))
        # the circle of int coordinates (cx, cy) covers [cx-4, cx+4]: its centroid is the int pixel
        pts.append(None if len(xs) == 0 else ((float(xs.mean()) + 0.5) / w, (float(ys.mean()) + 0.5) / h))
    return Pose(tuple(pts))


def fit_face(pose: Pose, landmarks: np.ndarray, width: int, height: int) -> Pose:
    """`pose` with the 68 dlib landmarks placed on its head: a similarity transform (in pixels of a
    width×height image) that takes the landmarks' eye centres onto the pose's two eye keypoints.

    Raises:
        InvalidInput: the landmarks are not 68×2, or the pose lacks an eye (nowhere to put the face).
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (N_FACE_POINTS, 2) or not np.isfinite(lm).all():
        raise InvalidInput(f"face points need the 68×2 dlib landmarks, got shape {lm.shape}.")
    r_eye, l_eye = pose.points[14], pose.points[15]
    if r_eye is None or l_eye is None:
        raise InvalidInput("the pose needs both eyes to place the face points.", "Drag the eyes in first.")
    src_r, src_l = lm[_DLIB_RIGHT_EYE].mean(0), lm[_DLIB_LEFT_EYE].mean(0)
    dst_r = np.array([r_eye[0] * width, r_eye[1] * height])
    dst_l = np.array([l_eye[0] * width, l_eye[1] * height])
    # complex numbers make the 2-point similarity exact: z ↦ s·z + t
    zs_r, zs_l = complex(*src_r), complex(*src_l)
    zd_r, zd_l = complex(*dst_r), complex(*dst_l)
    if abs(zs_l - zs_r) < 1e-9:
        raise InvalidInput("the face landmarks are degenerate (both eyes at one point).")
    s = (zd_l - zd_r) / (zs_l - zs_r)
    t = zd_r - s * zs_r
    z = s * (lm[:, 0] + 1j * lm[:, 1]) + t
    return pose.with_face(zip((z.real / width).tolist(), (z.imag / height).tolist()))


# Presets, normalised for a square frame; the person faces the camera.
_NOSE_EYES_EARS = {  # offsets of eyes and ears from the nose, in head sizes
    14: (-0.02, -0.015), 15: (0.02, -0.015), 16: (-0.04, -0.005), 17: (0.04, -0.005),
}


def _person(nose: Point, head: float, body: dict[int, Point]) -> Pose:
    pts: list[Point | None] = [None] * N_KEYPOINTS
    pts[0] = nose
    for i, (dx, dy) in _NOSE_EYES_EARS.items():
        pts[i] = (nose[0] + dx * head, nose[1] + dy * head)
    for i, p in body.items():
        pts[i] = p
    return Pose(tuple(pts))


def _standing(arms: dict[int, Point] | None = None) -> Pose:
    body = {1: (0.50, 0.26), 2: (0.40, 0.27), 3: (0.37, 0.41), 4: (0.36, 0.54),
            5: (0.60, 0.27), 6: (0.63, 0.41), 7: (0.64, 0.54),
            8: (0.44, 0.55), 9: (0.44, 0.73), 10: (0.44, 0.91),
            11: (0.56, 0.55), 12: (0.56, 0.73), 13: (0.56, 0.91)}
    body.update(arms or {})
    return _person((0.50, 0.16), 1.0, body)


PRESET_NAMES = ("portrait", "standing", "sitting", "hands up")


def preset(name: str, aspect: float = 1.0) -> Pose:
    """One of `PRESET_NAMES` as a new Pose for an output of `aspect` = width / height.

    The presets are drawn for a square; other shapes get the same figure in the centred square that
    fits, so a person keeps human proportions in a portrait or landscape render.
    """
    if not (math.isfinite(aspect) and aspect > 0):
        raise InvalidInput(f"the aspect ratio must be positive, got {aspect}.")
    pose = _square_preset(name)
    if aspect == 1.0:
        return pose
    sx, sy = (1.0 / aspect, 1.0) if aspect > 1 else (1.0, aspect)
    return Pose(tuple(None if p is None else (0.5 + (p[0] - 0.5) * sx, 0.5 + (p[1] - 0.5) * sy)
                      for p in pose.points))


def _square_preset(name: str) -> Pose:
    if name == "portrait":  # head and shoulders; arms and legs out of the frame
        return _person((0.50, 0.42), 3.0, {1: (0.50, 0.72), 2: (0.24, 0.78), 5: (0.76, 0.78)})
    if name == "standing":
        return _standing()
    if name == "sitting":  # on a chair seen from the front: thighs towards us, shins down
        return _person((0.50, 0.20), 1.0, {
            1: (0.50, 0.31), 2: (0.40, 0.32), 3: (0.38, 0.46), 4: (0.43, 0.58),
            5: (0.60, 0.32), 6: (0.62, 0.46), 7: (0.57, 0.58),
            8: (0.44, 0.60), 9: (0.40, 0.70), 10: (0.40, 0.90),
            11: (0.56, 0.60), 12: (0.60, 0.70), 13: (0.60, 0.90)})
    if name == "hands up":
        return _standing({3: (0.33, 0.18), 4: (0.36, 0.05), 6: (0.67, 0.18), 7: (0.64, 0.05)})
    raise InvalidInput(f"unknown pose preset {name!r}.", f"Use one of: {', '.join(PRESET_NAMES)}.")
