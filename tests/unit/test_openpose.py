"""OpenPose skeletons: the standard colours and widths, missing points, presets, JSON, face points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.controls.openpose import (
    COLORS,
    FACE_COLOR,
    JOINT_RADIUS,
    KEYPOINTS,
    LIMBS,
    N_KEYPOINTS,
    PRESET_NAMES,
    STICK_WIDTH,
    Pose,
    fit_face,
    limb_color,
    pose_from_image,
    preset,
    render,
)
from engine.errors import InvalidInput


def _spread_pose() -> Pose:
    """Every keypoint on a circle, so no limb midpoint lies under another limb or joint."""
    pts = tuple((0.5 + 0.4 * math.cos(2 * math.pi * i / N_KEYPOINTS), 0.5 + 0.4 * math.sin(2 * math.pi * i / N_KEYPOINTS))
                for i in range(N_KEYPOINTS))
    return Pose(pts)


def test_the_standard_openpose_constants():
    assert len(KEYPOINTS) == 18
    assert KEYPOINTS[0] == "nose"
    assert KEYPOINTS[1] == "neck"
    assert KEYPOINTS[17] == "left_ear"
    assert len(LIMBS) == 17
    assert LIMBS[0] == (1, 2)
    assert LIMBS[12] == (1, 0)
    assert COLORS[0] == (255, 0, 0)
    assert COLORS[12] == (0, 0, 255)
    assert COLORS[17] == (255, 0, 85)
    assert (STICK_WIDTH, JOINT_RADIUS) == (4, 4)
    assert limb_color(1) == (153, 51, 0)  # int(0.6 × (255, 85, 0))


@pytest.mark.parametrize("limb", range(len(LIMBS)))
def test_each_limb_alone_has_its_colour_at_its_midpoint(limb):
    a, b = LIMBS[limb]
    full = _spread_pose()
    pose = Pose(tuple(p if i in (a, b) else None for i, p in enumerate(full.points)))
    img = render(pose, 320, 256)
    assert img.shape == (256, 320, 3)
    assert img.dtype == np.uint8
    pa, pb = pose.points[a], pose.points[b]
    mx, my = int((pa[0] + pb[0]) / 2 * 320), int((pa[1] + pb[1]) / 2 * 256)
    assert tuple(img[my, mx]) == limb_color(limb)
    # the joints are full-colour discs of radius 4 centred on the keypoints
    for k in (a, b):
        x, y = int(pose.points[k][0] * 320), int(pose.points[k][1] * 256)
        assert tuple(img[y, x]) == COLORS[k]
        assert tuple(img[y, x + JOINT_RADIUS]) == COLORS[k]
    # nothing else is drawn: exactly two joint colours and one limb colour
    colours = {tuple(c) for c in np.unique(img.reshape(-1, 3), axis=0)} - {(0, 0, 0)}
    assert colours == {COLORS[a], COLORS[b], limb_color(limb)}


def test_a_limb_is_an_ellipse_of_half_width_four():
    pose = Pose((None,) * N_KEYPOINTS).moved(1, 0.2, 0.5).moved(2, 0.8, 0.5)  # a horizontal neck→shoulder limb
    img = render(pose, 200, 100)
    column = img[:, 100]
    lit = np.nonzero(column.any(axis=1))[0]
    assert lit.min() == 50 - STICK_WIDTH
    assert lit.max() == 50 + STICK_WIDTH
    assert all(tuple(column[y]) == limb_color(0) for y in lit)


def test_missing_points_skip_their_limbs():
    full = _spread_pose()
    img_full = render(full, 256, 256)
    no_elbow = full.without(3)  # right elbow: limbs 2 (shoulder→elbow) and 3 (elbow→wrist) vanish
    img = render(no_elbow, 256, 256)
    colours = {tuple(c) for c in np.unique(img.reshape(-1, 3), axis=0)}
    assert limb_color(2) not in colours
    assert limb_color(3) not in colours
    assert COLORS[3] not in colours
    assert limb_color(0) in colours
    assert COLORS[4] in colours
    assert (img_full != img).any(axis=2).sum() > 100
    assert not render(Pose(), 64, 64).any()


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_render_a_whole_skeleton(name):
    pose = preset(name)
    img = render(pose, 512, 512)
    colours = {tuple(c) for c in np.unique(img.reshape(-1, 3), axis=0)}
    visible = [i for i, p in enumerate(pose.points) if p is not None]
    assert {COLORS[i] for i in visible} <= colours
    drawn = [i for i, (a, b) in enumerate(LIMBS) if a in visible and b in visible]
    assert {limb_color(i) for i in drawn} <= colours
    assert all(0.0 <= c <= 1.0 for p in pose.points if p is not None for c in p)
    # the person faces us: their right side is on the image's left
    assert pose.points[2][0] < pose.points[5][0]
    assert pose.points[14][0] < pose.points[15][0]


def test_presets_differ_and_hands_up_raises_the_wrists():
    assert len({preset(n).to_json() for n in PRESET_NAMES}) == len(PRESET_NAMES)
    up, stand = preset("hands up"), preset("standing")
    assert up.points[4][1] < up.points[0][1] < stand.points[4][1]
    assert preset("portrait").points[9] is None  # no knees in a portrait
    with pytest.raises(InvalidInput, match="unknown pose preset"):
        preset("dancing")


@pytest.mark.parametrize(("width", "height"), [(768, 512), (512, 768)])
def test_presets_keep_human_proportions_in_any_shape(width, height):
    square, shaped = preset("standing"), preset("standing", width / height)

    def px(pose, k, w, h):
        return np.array(pose.points[k]) * (w, h)

    for a, b in ((2, 5), (1, 8), (9, 10)):  # shoulder width, torso, shin: the same in pixels × scale
        d_sq = np.linalg.norm(px(square, a, 512, 512) - px(square, b, 512, 512))
        d = np.linalg.norm(px(shaped, a, width, height) - px(shaped, b, width, height))
        assert d == pytest.approx(d_sq, rel=1e-9)
    assert shaped.points[0][0] == pytest.approx(0.5)  # centred
    with pytest.raises(InvalidInput, match="aspect"):
        preset("standing", 0.0)


def test_json_round_trip_keeps_missing_points_and_face():
    lm = np.stack([np.linspace(10, 60, 68), np.linspace(20, 40, 68)], 1)
    pose = fit_face(preset("standing").without(9), lm, 512, 512)
    back = Pose.from_json(pose.to_json())
    assert back == pose
    assert back.points[9] is None
    assert len(back.face) == 68
    with pytest.raises(InvalidInput, match="18 keypoints"):
        Pose.from_dict({"format": "openpose-coco18", "keypoints": [[0.1, 0.2]]})
    with pytest.raises(InvalidInput, match="not valid JSON"):
        Pose.from_json("{nope")
    with pytest.raises(InvalidInput, match="finite"):
        Pose((None,) * 17 + ((float("nan"), 0.5),))


def test_pose_is_immutable_and_edits_return_new_poses():
    pose = preset("standing")
    moved = pose.moved(4, 0.1, 0.2)
    assert moved.points[4] == (0.1, 0.2)
    assert pose.points[4] != (0.1, 0.2)
    with pytest.raises(AttributeError):
        pose.points = ()  # type: ignore[misc]
    assert pose.nearest(0.361, 0.541, 0.02) == 4
    assert pose.nearest(0.9, 0.9, 0.02) is None


def test_the_keypoints_are_read_back_from_the_image():
    pose = preset("sitting")
    back = pose_from_image(render(pose, 512, 768))
    for p, q in zip(pose.points, back.points):
        assert (p is None) == (q is None)
        if p is not None:
            assert int(q[0] * 512) == int(p[0] * 512)
            assert int(q[1] * 768) == int(p[1] * 768)
    # read back keypoints sit on pixel centres: reading their own image gives them again exactly
    again = pose_from_image(render(back, 512, 768))
    assert again == back


def test_face_points_follow_the_eyes_and_are_white_dots(detector, astronaut):
    lm = detector.detect(astronaut)[0].landmarks
    pose = fit_face(preset("portrait"), lm, 512, 512)
    face = np.asarray(pose.face)
    # the landmarks' eye centres land on the pose's eyes
    np.testing.assert_allclose(face[36:42].mean(0), pose.points[14], atol=1e-9)
    np.testing.assert_allclose(face[42:48].mean(0), pose.points[15], atol=1e-9)
    img = render(pose, 512, 512)
    chin = face[8]  # the chin is far from every joint: a white dot of radius 3
    x, y = int(chin[0] * 512), int(chin[1] * 512)
    assert tuple(img[y, x]) == FACE_COLOR
    assert tuple(img[y, x + 3]) == FACE_COLOR
    assert (img == 255).all(axis=2).sum() > 68 * 9
    with pytest.raises(InvalidInput, match="both eyes"):
        fit_face(preset("portrait").without(15), lm, 512, 512)
