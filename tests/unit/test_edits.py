"""W+ edits against hand-written formulas of REFERENCE.md §5 (engine.edits.directions)."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from engine.api import EditKind, EditState
from engine.edits.directions import GROUPS, SENSITIVE, DirectionLibrary, interpolate
from engine.errors import InvalidInput, ModelCorrupt, ModelMissing
from engine.resources import resource_path

DIRS = resource_path("directions")


@pytest.fixture(scope="module")
def lib() -> DirectionLibrary:
    return DirectionLibrary.load_default()


@pytest.fixture(scope="module")
def w() -> np.ndarray:
    # a W+ with the statistics of real e4e codes (mean ≈ 0.14, std ≈ 0.47)
    rng = np.random.default_rng(1234)
    return (0.14 + 0.47 * rng.standard_normal((1, 18, 512))).astype(np.float32)


def _pca():
    with np.load(DIRS / "ganspace" / "ffhq_pca.npz") as z:
        return z["mean"].astype(np.float64), z["comp"].astype(np.float64), z["std"].astype(np.float64)


def _config(name):
    for line in (DIRS / "ganspace" / "ganspace_configs.csv").read_text().splitlines():
        parts = line.split("\t")
        if parts[0] == name:
            return int(parts[1]), int(parts[2]), int(parts[3]), float(parts[4])
    raise KeyError(name)


def test_interfacegan_adds_alpha_d_on_all_layers(lib, w):
    d = np.load(DIRS / "interfacegan" / "age.npy").astype(np.float64)  # 1×512
    out = lib.apply(w, {"age": 2.5})
    expected = (w.astype(np.float64) + 2.5 * d[None]).astype(np.float32)
    assert out.dtype == np.float32
    assert out.shape == (1, 18, 512)
    np.testing.assert_array_equal(out, expected)
    # the official float32 arithmetic agrees to rounding
    official = w + np.float32(2.5) * np.load(DIRS / "interfacegan" / "age.npy")[None]
    np.testing.assert_allclose(out, official, atol=1e-6, rtol=0)


def test_latent_direction_edits_layers_0_to_7_in_float64(lib, w):
    d = np.load(DIRS / "latent_directions" / "gender.npy")
    assert d.dtype == np.float64
    out = lib.apply(w, {"gender": -3.0})
    expected = w.astype(np.float64).copy()
    expected[0, :8] += -3.0 * d[:8]
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    np.testing.assert_array_equal(out[0, 8:], w[0, 8:])
    assert not np.array_equal(out[0, :8], w[0, :8])


def test_latent_direction_is_not_rounded_to_float32_first(lib, w):
    # 1/3 is not a float32: computing α·d in float32 rounds differently from the official float64 path
    d = np.load(DIRS / "latent_directions" / "face_shape.npy")
    alpha = 1.0 / 3.0
    out = lib.apply(w, {"face_shape": alpha})
    f64 = (w[0, :8].astype(np.float64) + alpha * d[:8]).astype(np.float32)
    f32 = w[0, :8] + np.float32(alpha) * d[:8].astype(np.float32)
    np.testing.assert_array_equal(out[0, :8], f64)
    assert not np.array_equal(f64, f32)  # the check above would catch a float32 shortcut


@pytest.mark.parametrize("name", ["face_roundness", "smile", "lipstick", "overexposed"])
@pytest.mark.parametrize("offset", [-7.5, 0.5, 12.0])
def test_ganspace_slider_is_an_offset_of_the_official_absolute_rule(lib, w, name, offset):
    mean, comp, std = _pca()
    k, start, end, _strength = _config(name)
    slider = "smile_gs" if name == "smile" else name
    # official rule, written out: coordinate on layer 0, then set it to alpha_abs on [start, end)
    w64 = w[0].astype(np.float64)
    coord = float((w64[0] - mean[0]) @ comp[k, 0]) / std[k]
    alpha_abs = coord + offset
    delta = (alpha_abs - coord) * comp[k, 0] * std[k]
    expected = w64.copy()
    expected[start:end] += delta
    out = lib.apply(w, {slider: offset})
    np.testing.assert_allclose(out[0], expected, atol=2e-6, rtol=0)
    untouched = [i for i in range(18) if not start <= i < end]
    np.testing.assert_array_equal(out[0, untouched], w[0, untouched])
    # the library's own absolute rule agrees, and the measured coordinate moved by the offset
    np.testing.assert_allclose(
        lib.pca.delta_absolute(w, k, start, end, alpha_abs), expected - w64, atol=1e-9, rtol=0
    )
    if start == 0:
        assert lib.pca.coordinate(out, k) == pytest.approx(coord + offset, abs=1e-4)


def test_ganspace_absolute_rule_is_not_the_identity_at_zero(lib, w):
    k, start, end, _ = _config("lipstick")
    assert np.abs(lib.pca.delta_absolute(w, k, start, end, 0.0)).max() > 0


def test_slider_zero_is_identity_for_every_slider(lib, w):
    kinds = set()
    for spec in lib.catalog:
        out = lib.apply(w, {spec.name: 0.0})
        np.testing.assert_array_equal(out, w, err_msg=spec.name)
        kinds.add(spec.kind)
    assert kinds == set(EditKind)
    assert np.array_equal(lib.apply(w, EditState()), w)
    assert lib.apply(w, EditState()) is not w


def test_combined_edits_sum_their_displacements_in_any_order(lib, w):
    edits = {"age": 1.5, "gender": -2.0, "lipstick": 6.0, "pose": -1.0, "face_roundness": 3.0}
    total = sum(lib.delta(w, {n: v}) for n, v in edits.items())
    combined = lib.apply(w, edits)
    np.testing.assert_array_equal(combined, (w.astype(np.float64) + total[None]).astype(np.float32))
    reordered = lib.apply(w, dict(reversed(list(edits.items()))))
    np.testing.assert_array_equal(combined, reordered)
    np.testing.assert_array_equal(combined, lib.apply(w, EditState.from_mapping(edits)))
    # sequential application (re-measuring nothing) lands in the same place up to float32 rounding
    seq = w
    for n, v in edits.items():
        seq = lib.apply(seq, {n: v})
    np.testing.assert_allclose(seq, combined, atol=2e-6, rtol=0)


def test_unknown_sensitive_and_bad_values_are_refused(lib, w):
    with pytest.raises(InvalidInput, match="Unknown edit 'smiel'") as info:
        lib.apply(w, {"smiel": 1.0})
    assert "smile" in info.value.hint
    for name in sorted(SENSITIVE):
        with pytest.raises(InvalidInput, match="not available"):
            lib.apply(w, {name: 1.0})
    with pytest.raises(InvalidInput, match="finite"):
        lib.apply(w, {"age": float("nan")})
    with pytest.raises(InvalidInput, match="1×18×512"):
        lib.apply(w[:, :17], {"age": 1.0})
    # the 18×512 form is accepted and gets the batch axis
    assert lib.apply(w[0], {"age": 1.0}).shape == (1, 18, 512)


def test_catalog_is_grouped_unique_and_complete(lib):
    names = [s.name for s in lib.catalog]
    assert len(names) == len(set(names))
    assert {"age", "smile", "pose", "gender", "glasses", "lipstick", "smile_gs", "smile_ld", "age_ld"} <= set(names)
    assert not SENSITIVE & set(names)
    ranks = [GROUPS.index(s.group) for s in lib.catalog]
    assert ranks == sorted(ranks)  # grouped, in GROUPS order
    for s in lib.catalog:
        assert s.minimum < s.default == 0.0 < s.maximum, s.name
        assert s.label
        assert s.tooltip
    by_kind = {k: sum(s.kind is k for s in lib.catalog) for k in EditKind}
    n_ld = len(list((DIRS / "latent_directions").glob("*.npy"))) - len(SENSITIVE)
    n_gs = len((DIRS / "ganspace" / "ganspace_configs.csv").read_text().strip().splitlines())
    assert by_kind == {EditKind.INTERFACEGAN: 3, EditKind.LATENT_DIRECTION: n_ld, EditKind.GANSPACE: n_gs}


def test_interpolate(w):
    rng = np.random.default_rng(5)
    b = rng.standard_normal((1, 18, 512)).astype(np.float32)
    np.testing.assert_array_equal(interpolate(w, b, 0.0), w)
    np.testing.assert_array_equal(interpolate(w, b, 1.0), b)
    mid = interpolate(w, b, 0.25)
    np.testing.assert_array_equal(mid, (0.75 * w.astype(np.float64) + 0.25 * b.astype(np.float64)).astype(np.float32))
    with pytest.raises(InvalidInput):
        interpolate(w, b, float("inf"))
    with pytest.raises(InvalidInput):
        interpolate(w, b[:, :3], 0.5)


def test_resource_path_follows_a_pyinstaller_bundle(monkeypatch, tmp_path):
    assert (resource_path("directions") / "NOTICE").is_file()
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert resource_path("directions", "x.npy") == tmp_path / "resources" / "directions" / "x.npy"


def test_damaged_directions_are_reported(tmp_path):
    with pytest.raises(ModelMissing):
        DirectionLibrary.load(tmp_path / "none")
    root = tmp_path / "directions"
    shutil.copytree(DIRS, root)
    np.save(root / "interfacegan" / "age.npy", np.zeros((3, 7), np.float32))
    with pytest.raises(ModelCorrupt, match=r"age\.npy"):
        DirectionLibrary.load(root)
    shutil.copy(DIRS / "interfacegan" / "age.npy", root / "interfacegan" / "age.npy")
    (root / "ganspace" / "ganspace_configs.csv").write_text("lipstick\t34\t10\t99\t20\n")
    with pytest.raises(ModelCorrupt, match="out of range"):
        DirectionLibrary.load(root)
