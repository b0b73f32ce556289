"""Face detection (dlib HOG) and 68-point landmarks, as the official script does them (REFERENCE.md §1.1).

The official script calls the HOG detector with one upsampling pass and processes every face. We do
the same, order the faces largest first, and add one product decision: a detection whose HOG score is
far below the others' is dropped when a confident face exists (dlib's score is a margin; real frontal
faces score well above 0.3, while textures such as a mission patch in `skimage.data.astronaut()` can
scrape past 0). When nothing confident is found, weak detections are still returned rather than
claiming "no face".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from engine.api import FaceBox
from engine.errors import InvalidInput


@dataclass(frozen=True)
class Detection:
    """One detected face: its box in image pixels, dlib's HOG score, and the 68 landmarks if computed."""

    box: FaceBox
    score: float


def _check_image(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise InvalidInput(f"face detection needs an H×W×3 uint8 RGB image, got {a.dtype} {a.shape}.")
    return np.ascontiguousarray(a)


class FaceDetector:
    """dlib HOG frontal-face detector + the 68-point shape predictor.

    Thread-safe: dlib objects are shared, so calls are serialised with a lock.

    Args:
        upsample: HOG upsampling passes (1 = the official script; finds faces down to ≈40 px).
        min_score: HOG score a face needs when a confident face exists elsewhere in the image.
    """

    def __init__(self, upsample: int = 1, min_score: float = 0.3) -> None:
        from engine.faces.dlib_models import SHAPE_68, import_dlib, model_path

        dlib = import_dlib()
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(model_path(SHAPE_68)))
        self._lock = threading.Lock()

    def detect_boxes(self, image: np.ndarray, upsample: int | None = None) -> list[Detection]:
        """HOG detections without landmarks, largest first (see the module note on weak detections).

        Args:
            image: H×W×3 uint8 RGB.
            upsample: override the number of upsampling passes.

        Returns:
            Detections (boxes in `image` pixels, landmarks None).
        """
        img = _check_image(image)
        n_up = self.upsample if upsample is None else int(upsample)
        with self._lock:
            rects, scores, _ = self._detector.run(img, n_up, 0.0)
        dets = [
            Detection(FaceBox(float(r.left()), float(r.top()), float(r.right()), float(r.bottom())), float(s))
            for r, s in zip(rects, scores)
        ]
        if any(d.score >= self.min_score for d in dets):
            dets = [d for d in dets if d.score >= self.min_score]
        dets.sort(key=lambda d: d.box.area, reverse=True)
        return dets

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        """The 68 (x, y) landmarks of the face in `box` (dlib's integer points, as float64 68×2)."""
        img = _check_image(image)
        rect = self._dlib.rectangle(
            round(box.left), round(box.top), round(box.right), round(box.bottom)
        )
        with self._lock:
            shape = self._predictor(img, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def detections(self, image: np.ndarray) -> list[Detection]:
        """Every face with its landmarks, largest first."""
        img = _check_image(image)
        out = []
        for d in self.detect_boxes(img):
            lm = self.landmarks(img, d.box)
            b = d.box
            out.append(Detection(FaceBox(b.left, b.top, b.right, b.bottom, landmarks=lm), d.score))
        return out

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Every face (box + 68 landmarks), largest first.

        Args:
            image: H×W×3 uint8 RGB.

        Returns:
            FaceBoxes in image pixels; empty when there is no face.

        Raises:
            InvalidInput: not an RGB uint8 image.
        """
        return [d.box for d in self.detections(image)]
