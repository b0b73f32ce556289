"""Live face tracking for the capture overlay: a box and 68 landmarks per frame, cheaply.

HOG detection is the expensive part, so it runs on a downscaled copy of the frame and only every
`detect_every` frames; in between, the last box is reused and moved with the landmarks' centroid.
Landmarks always come from the full-resolution frame (≈2 ms each).
"""

from __future__ import annotations

import numpy as np

from engine.api import FaceBox
from engine.faces.detect import FaceDetector


class FaceTracker:
    """Follows the largest face of a frame stream.

    Args:
        detector: the shared FaceDetector (a new one is built when None).
        detect_width: frames wider than this are downscaled (INTER_AREA) for detection.
        detect_upsample: HOG upsampling on the downscaled frame (1 on a 320-wide copy ≈ 0 at 640).
        detect_every: run the detector every N frames (1 = every frame).
    """

    def __init__(
        self,
        detector: FaceDetector | None = None,
        *,
        detect_width: int = 320,
        detect_upsample: int = 1,
        detect_every: int = 4,
    ) -> None:
        self.detector = detector or FaceDetector()
        self.detect_width = int(detect_width)
        self.detect_upsample = int(detect_upsample)
        self.detect_every = max(1, int(detect_every))
        self._box: FaceBox | None = None
        self._offset = np.zeros(2)  # box centre minus landmark centroid, measured at detection time
        self._since_detect = 0

    def reset(self) -> None:
        """Forget the current face (the next frame runs the detector)."""
        self._box = None
        self._since_detect = 0

    def _detect(self, frame: np.ndarray) -> FaceBox | None:
        import cv2

        h, w = frame.shape[:2]
        scale = 1.0
        small = frame
        if w > self.detect_width:
            scale = self.detect_width / w
            small = cv2.resize(frame, (self.detect_width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        dets = self.detector.detect_boxes(small, upsample=self.detect_upsample)
        if not dets:
            return None
        b = dets[0].box
        return FaceBox(b.left / scale, b.top / scale, b.right / scale, b.bottom / scale)

    def update(self, frame: np.ndarray) -> FaceBox | None:
        """Track one frame.

        Args:
            frame: H×W×3 uint8 RGB.

        Returns:
            The face box with 68 landmarks (frame pixels), or None when no face is visible.
        """
        need_detect = self._box is None or self._since_detect >= self.detect_every - 1
        if need_detect:
            box = self._detect(frame)
            self._since_detect = 0
            if box is None:
                self._box = None
                return None
            lm = self.detector.landmarks(frame, box)
            centre = np.array([(box.left + box.right) / 2, (box.top + box.bottom) / 2])
            self._offset = centre - lm.mean(axis=0)
        else:
            self._since_detect += 1
            prev = self._box
            assert prev is not None
            lm = self.detector.landmarks(frame, prev)
            # follow the motion: re-centre the previous box on the new landmarks
            centre = lm.mean(axis=0) + self._offset
            hw, hh = (prev.right - prev.left) / 2, (prev.bottom - prev.top) / 2
            box = FaceBox(centre[0] - hw, centre[1] - hh, centre[0] + hw, centre[1] + hh)
        self._box = FaceBox(box.left, box.top, box.right, box.bottom, landmarks=lm)
        return self._box
