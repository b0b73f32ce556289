"""Canny control images: OpenCV's edges with the ControlNet annotator's thresholds, three channels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.controls.canny import DEFAULT_HIGH, DEFAULT_LOW, canny
from engine.errors import InvalidInput


def test_defaults_are_the_annotators():
    assert (DEFAULT_LOW, DEFAULT_HIGH) == (100, 200)


def test_equals_opencv_on_the_astronaut(astronaut):
    out = canny(astronaut)
    ref = cv2.Canny(astronaut, 100, 200)
    assert out.shape == (512, 512, 3)
    assert out.dtype == np.uint8
    assert (out[..., 0] == ref).all()
    assert (out[..., 1] == ref).all()
    assert (out[..., 2] == ref).all()
    assert set(np.unique(out).tolist()) == {0, 255}
    frac = (ref > 0).mean()
    assert 0.03 < frac < 0.3, frac  # a real photo: edges, not noise and not nothing


def test_thresholds_change_the_edges(astronaut):
    many = (canny(astronaut, 50, 100)[..., 0] > 0).sum()
    few = (canny(astronaut, 200, 400)[..., 0] > 0).sum()
    assert many > (canny(astronaut)[..., 0] > 0).sum() > few
    assert (canny(astronaut, 200, 400)[..., 0] == cv2.Canny(astronaut, 200, 400)).all()


def test_grey_and_rgba_inputs(astronaut):
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    assert (canny(grey)[..., 0] == cv2.Canny(grey, 100, 200)).all()
    rgba = np.concatenate([astronaut, np.full((512, 512, 1), 7, np.uint8)], axis=2)
    assert (canny(rgba) == canny(astronaut)).all()


def test_bad_inputs_are_refused():
    with pytest.raises(InvalidInput, match="uint8"):
        canny(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InvalidInput, match="100/200"):
        canny(np.zeros((8, 8, 3), np.uint8), 200, 100)
