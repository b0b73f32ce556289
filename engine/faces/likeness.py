"""Likeness: the distance between two faces' dlib descriptors (dlib_face_recognition_resnet_model_v1).

dlib's ResNet maps a face to a 128-d vector; its authors calibrated it so that two photos of the same
person are usually closer than **0.6** (Euclidean) and different people farther (99.38 % on LFW at
that threshold). So: < 0.6 ≈ same person, and smaller is more alike (≈0.3–0.5 is typical for
different photos of one person); > 0.6 ≈ different people. It measures identity, not image
similarity: the same face in another light or expression stays close.
"""

from __future__ import annotations

import threading

import numpy as np

from engine.api import FaceBox
from engine.errors import FaceNotFound
from engine.images import as_rgb_uint8

SAME_PERSON_THRESHOLD = 0.6


class FaceRecognizer:
    """dlib's face descriptor (128-d) on the largest face of an image. Thread-safe."""

    def __init__(self, detector=None) -> None:
        from engine.faces.detect import FaceDetector
        from engine.faces.dlib_models import RECOGNITION, import_dlib, model_path

        dlib = import_dlib()
        self._dlib = dlib
        self.detector = detector or FaceDetector()
        self._net = dlib.face_recognition_model_v1(str(model_path(RECOGNITION)))
        self._lock = threading.Lock()

    def _face(self, img: np.ndarray, what: str, aligned: bool) -> FaceBox:
        faces = self.detector.detect(img)
        if faces:
            return faces[0]
        h, w = img.shape[:2]
        if aligned and h == w and h >= 128:
            # An FFHQ-aligned crop whose face the HOG detector misses (e.g. a black-filled corner):
            # the alignment puts the face in a fixed place, so use that box.
            box = FaceBox(0.22 * w, 0.33 * h, 0.74 * w, 0.86 * h)
            return FaceBox(box.left, box.top, box.right, box.bottom, landmarks=self.detector.landmarks(img, box))
        raise FaceNotFound(
            f"No face was found in {what}.",
            "Use a photo with a clearly visible, roughly frontal face.",
        )

    def descriptor(self, image: np.ndarray, *, what: str = "the image", aligned: bool = False) -> np.ndarray:
        """The 128-d descriptor (float64) of the largest face in `image` (H×W×3 uint8 RGB).

        With `aligned=True` a square FFHQ-aligned crop whose face the detector misses is read at the
        face position the alignment guarantees.

        Raises:
            FaceNotFound: no face.
        """
        img = as_rgb_uint8(image, what=what)
        face = self._face(img, what, aligned)
        assert face.landmarks is not None
        shape = self._dlib.full_object_detection(
            self._dlib.rectangle(int(face.left), int(face.top), int(face.right), int(face.bottom)),
            [self._dlib.point(int(x), int(y)) for x, y in face.landmarks],
        )
        with self._lock:
            d = self._net.compute_face_descriptor(img, shape)
        return np.asarray(d, dtype=np.float64)

    def distance(self, face_a: np.ndarray, image_b: np.ndarray) -> float:
        """Euclidean distance between the two images' largest faces (< 0.6 ≈ same person)."""
        a = self.descriptor(face_a, what="the first image", aligned=True)
        b = self.descriptor(image_b, what="the second image")
        return float(np.linalg.norm(a - b))


def likeness_distance(face_a: np.ndarray, image_b: np.ndarray, *, recognizer: FaceRecognizer | None = None) -> float:
    """How alike two faces are, as dlib's descriptor distance.

    Args:
        face_a: an identity's aligned face (512² RGB uint8) or any photo with a face.
        image_b: any RGB uint8 image with a face (e.g. a generated image); its largest face is used.
        recognizer: reuse a loaded FaceRecognizer (building one loads ≈ 30 MB of dlib models).

    Returns:
        Euclidean distance of the 128-d descriptors: < 0.6 ≈ the same person (dlib's calibration),
        0 = identical descriptors.

    Raises:
        FaceNotFound: either image has no face.
    """
    rec = recognizer or FaceRecognizer()
    return rec.distance(face_a, image_b)
