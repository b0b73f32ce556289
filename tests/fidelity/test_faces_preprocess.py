"""The e4e input composite against the official mask → blur → resize → composite (fixture e4e_input_expected.npy).

What the fixture holds: the official step-3 composite of the aligned case-A face with a synthetic 19-class
label map that is not shipped. What these tests prove:

1. From the fixture and the aligned face alone we recover the official 256² soft mask m exactly
   (E = x·(1−m) + m ⇒ m = (E − x)/(1 − x); every recovered value is k/255 within 1e-3/255).
2. We reconstructed the 512² binary "remove" mask: an ellipse (centre 0.5·512, 0.47·512; semi-axes
   0.33·512, 0.42·512) united with a neck rectangle (|x − 256| < 76.8, 431 ≤ y < 477). Its kept area is
   118,473 px — exactly the fixture's label counts minus background (0) and cloth (18). Our blur
   (OpenCV 5×5) + PIL bicubic resize of that binary mask reproduces the recovered soft mask exactly, and
   the whole composite equals the fixture within 1e-6 (observed: bit-identical).
3. The label → mask rule (labels 0 and 18 removed, everything else kept) is tested on a label map
   with that geometry and all 19 labels. The label map itself is a stand-in: only its {0, 18} vs.
   rest partition matters for the composite, and that partition is pinned by (2).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.faces.preprocess import e4e_image, e4e_input, removal_mask, soft_mask

S = 512


def _kept_region() -> np.ndarray:
    yy, xx = np.mgrid[:S, :S].astype(np.float64)
    ellipse = ((xx - 0.5 * S) / (0.33 * S)) ** 2 + ((yy - 0.47 * S) / (0.42 * S)) ** 2 <= 1
    neck = (np.abs(xx - 256) < 76.8) & (yy >= 431) & (yy < 477)
    return ellipse | neck


@pytest.fixture(scope="module")
def aligned(fixtures_dir):
    return np.asarray(Image.open(fixtures_dir / "align_caseA_expected.png").convert("RGB"))


@pytest.fixture(scope="module")
def expected(fixtures_dir):
    return np.load(fixtures_dir / "e4e_input_expected.npy")


def _recover_soft_mask(aligned: np.ndarray, expected: np.ndarray) -> np.ndarray:
    x = e4e_image(aligned).astype(np.float64)
    expected = expected.astype(np.float64)
    den = 1.0 - x
    best = np.argmax(den, axis=0)[None]  # the channel farthest from white pins m best
    e = np.take_along_axis(expected[0], best, 0)[0]
    xb = np.take_along_axis(x, best, 0)[0]
    return (e - xb) / (1.0 - xb)


def test_fixture_soft_mask_is_recoverable_and_quantised(aligned, expected):
    m = _recover_soft_mask(aligned, expected)
    assert np.abs(m * 255 - np.rint(m * 255)).max() < 1e-3


def test_label_counts_match_the_reconstructed_region(fixtures_dir):
    counts = json.loads((fixtures_dir / "preprocess_meta.json").read_text())["e4e_input"]["label_counts"]
    assert sum(counts.values()) == S * S
    removed = counts["0"] + counts.get("18", 0)
    assert _kept_region().sum() == S * S - removed


def test_blur_and_bicubic_resize_reproduce_the_official_soft_mask(aligned, expected):
    mask = np.where(_kept_region(), 0, 255).astype(np.uint8)
    ours = soft_mask(mask)
    recovered = _recover_soft_mask(aligned, expected)
    assert np.abs(np.rint(ours * 255) - np.rint(recovered * 255)).max() == 0


def test_composite_matches_the_fixture(aligned, expected):
    labels = np.zeros((S, S), np.int64)
    labels[_kept_region()] = 1
    labels[470:, :] = np.where(labels[470:, :] == 0, 18, labels[470:, :])  # cloth at the bottom, removed too
    out = e4e_input(aligned, removal_mask(labels))
    assert out.shape == (1, 3, 256, 256)
    assert out.dtype == np.float32
    assert np.abs(out - expected).max() <= 1e-6


def test_only_background_and_cloth_are_removed():
    labels = np.arange(19).reshape(1, 19).repeat(2, axis=0)
    m = removal_mask(labels)
    assert m.dtype == np.uint8
    assert [int(v) for v in m[0]] == [255] + [0] * 17 + [255]


def test_without_a_mask_the_input_is_the_plain_scaled_face(aligned, expected):
    out = e4e_input(aligned, None)
    small = np.asarray(Image.fromarray(aligned).resize((256, 256), Image.Resampling.BICUBIC)).astype(np.float32)
    assert np.array_equal(out[0], (small.transpose(2, 0, 1) - 127.5) / 127.5)
    # where the official mask is 0 the fixture equals the unmasked input
    m = soft_mask(np.where(_kept_region(), 0, 255).astype(np.uint8))
    assert np.array_equal(out[0][:, m == 0], expected[0][:, m == 0])
    assert (expected[0][:, m == 1] == 1).all()
