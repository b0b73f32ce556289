"""FFHQ alignment against the official `align_face` (REFERENCE.md §1.2, fixtures align_*)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.faces.align import align_face, face_quad, resize_aligned


@pytest.fixture(scope="module")
def meta(fixtures_dir):
    return json.loads((fixtures_dir / "align_meta.json").read_text())


@pytest.fixture(scope="module")
def card(fixtures_dir):
    return np.asarray(Image.open(fixtures_dir / "align_input.png").convert("RGB"))


def test_case_a_matches_official_within_one_grey_level(meta, card, fixtures_dir):
    expected = np.asarray(Image.open(fixtures_dir / "align_caseA_expected.png").convert("RGB")).astype(int)
    out, width = align_face(card, np.array(meta["caseA"]["landmarks"]))
    assert out.shape == (512, 512, 3)
    assert out.dtype == np.uint8
    diff = np.abs(out.astype(int) - expected)
    assert diff.max() <= 1
    assert width == pytest.approx(meta["caseA"]["quad_width_returned"])


def test_case_b_near_the_corner_is_black_filled_like_the_official(meta, card):
    lm = np.array(meta["caseB"]["landmarks"])
    out, width = align_face(card, lm)
    assert width == pytest.approx(meta["caseB"]["quad_width_returned"])
    # The quad reaches above and left of the picture: those output pixels must be exactly black,
    # while the part over the card must not be.
    quad = face_quad(lm).corners
    assert quad[:, 0].min() < 0
    assert quad[:, 1].min() < 0
    assert (out[:60, :, :] == 0).all()  # rows mapped above y = 0
    assert (out[:, :30, :] == 0).all()  # columns mapped left of x = 0
    assert out[300:, 300:].mean() > 40


def test_reflect_mode_fills_the_border_with_picture_content(meta, card):
    lm = np.array(meta["caseB"]["landmarks"])
    official, _ = align_face(card, lm)
    reflect, width = align_face(card, lm, mode="reflect")
    assert width == pytest.approx(meta["caseB"]["quad_width_returned"])
    assert (reflect[:60].max(axis=2) > 0).mean() > 0.99  # no black band
    # inside the picture both modes sample the same pixels (away from the faded border)
    assert np.abs(reflect[400:, 400:].astype(int) - official[400:, 400:]).mean() < 3


def test_reflect_mode_leaves_a_centred_face_unchanged(meta, card, fixtures_dir):
    out, _ = align_face(card, np.array(meta["caseA"]["landmarks"]), mode="reflect")
    expected = np.asarray(Image.open(fixtures_dir / "align_caseA_expected.png").convert("RGB")).astype(int)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_rgba_input_is_aligned_like_rgb_when_opaque(meta, card):
    rgba = np.concatenate([card, np.full((*card.shape[:2], 1), 255, np.uint8)], axis=2)
    a, _ = align_face(card, np.array(meta["caseA"]["landmarks"]))
    b, _ = align_face(rgba, np.array(meta["caseA"]["landmarks"]))
    assert np.array_equal(a, b)


def test_large_face_is_shrunk_first_like_the_official(meta, card):
    # Scale the card ×3: qsize ≈ 1320 → shrink = floor(1320/1024) = 1 (no shrink); ×5 → shrink 2.
    big = np.asarray(Image.fromarray(card).resize((card.shape[1] * 5, card.shape[0] * 5), Image.Resampling.BILINEAR))
    lm = np.array(meta["caseA"]["landmarks"], dtype=float) * 5
    out, width = align_face(big, lm)
    assert out.shape == (512, 512, 3)
    assert width == pytest.approx(440.0 * 5 / 2)  # width in pixels of the shrunk image


def test_bad_landmarks_and_mode_are_refused(card):
    from engine.errors import InvalidInput

    with pytest.raises(InvalidInput, match="68×2"):
        align_face(card, np.zeros((5, 2)))
    with pytest.raises(InvalidInput, match="degenerate"):
        align_face(card, np.zeros((68, 2)))
    with pytest.raises(InvalidInput, match="mode"):
        align_face(card, np.ones((68, 2)), mode="mirror")  # type: ignore[arg-type]


def test_resize_aligned_is_bilinear_to_512(card):
    out = resize_aligned(card[:256, :256])
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(card[:256, :256])).resize((512, 512), Image.Resampling.BILINEAR))
    assert np.array_equal(out, ref)
    assert np.array_equal(resize_aligned(out), out)
