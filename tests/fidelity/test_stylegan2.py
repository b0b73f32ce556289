"""StyleGAN2-FFHQ-1024 preview against the official generator's fixtures (STYLEGAN2.md §6).

The rule-wbn-1d decoder is written in the official e4e file layout and loaded through the product
path (`StyleGANPreview.from_checkpoint` → `engine.networks.e4e.load_e4e_checkpoint`). The full 1024²
forward (~3–4 s, ~2 GB) runs once per module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.networks.stylegan2.ops import fused_leaky_relu, upfirdn2d
from engine.pipeline.face_preview import StyleGANPreview, resize_like_official, to_uint8
from engine.testing.stylegan2 import decoder_shapes, rule_decoder_state, rule_wplus, write_e4e_checkpoint
from engine.testing.wbn import draw

TOL = 1e-4


@pytest.fixture(scope="module")
def e4e_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt"
    return write_e4e_checkpoint(path, rule_decoder_state())


@pytest.fixture(scope="module")
def preview(e4e_file):
    return StyleGANPreview.from_checkpoint(e4e_file, device="cpu")


@pytest.fixture(scope="module")
def wplus(fixtures_dir):
    w = np.load(fixtures_dir / "stylegan2_wplus_input.npy")
    np.testing.assert_array_equal(w, rule_wplus("input:wplus"))  # the documented pseudo-key
    return w


@pytest.fixture(scope="module")
def image(preview, wplus):
    return torch.from_numpy(preview.render_float(wplus, 1024))[None]


def _expected(fixtures_dir, name):
    return np.load(fixtures_dir / f"stylegan2_{name}_expected.npy")


def test_manifest_keys_and_shapes_match(fixtures_dir):
    manifest = json.loads((fixtures_dir / "stylegan2_manifest.json").read_text())
    official = {d["key"]: tuple(d["shape"]) for d in manifest["keys"]}
    assert decoder_shapes() == official
    assert list(decoder_shapes()) == list(official)  # file order too


def test_image_avg256(image, fixtures_dir):
    got = torch.nn.functional.avg_pool2d(image, 4).numpy()
    np.testing.assert_allclose(got, _expected(fixtures_dir, "avg256"), rtol=0, atol=TOL)


def test_image_center64(image, fixtures_dir):
    got = image[:, :, 480:544, 480:544].numpy()
    np.testing.assert_allclose(got, _expected(fixtures_dir, "center64"), rtol=0, atol=TOL)


def test_image_corner32_zero_border(image, fixtures_dir):
    got = image[:, :, :32, :32].numpy()
    np.testing.assert_allclose(got, _expected(fixtures_dir, "corner32"), rtol=0, atol=TOL)


def test_skip64_of_the_partial_path(preview, wplus, fixtures_dir):
    got = preview.render_float(wplus, 64)[None]
    np.testing.assert_allclose(got, _expected(fixtures_dir, "skip64"), rtol=0, atol=TOL)


def test_official_preview_png(image, fixtures_dir):
    """clip, (x+1)/2·255, truncation, PIL bicubic 1024 → 256: what `render(w, 256, full=True)` returns."""
    expected = np.asarray(Image.open(fixtures_dir / "stylegan2_preview256_expected.png").convert("RGB")).astype(int)
    got = resize_like_official(to_uint8(image[0].numpy()), 256)
    assert got.dtype == np.uint8
    assert got.shape == (256, 256, 3)
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_reduced_path_is_the_256_skip_and_differs_from_the_full_image(preview, wplus, image):
    """The 256 preview is the 256² level's skip (documented): close in layout, not the downscaled image."""
    reduced = preview.render_float(wplus, 256)
    assert reduced.shape == (3, 256, 256)
    avg = torch.nn.functional.avg_pool2d(image, 4)[0].numpy()
    diff = np.abs(reduced - avg)
    assert diff.max() > 1e-2  # later to_rgb layers still add colour
    assert np.corrcoef(reduced.ravel(), avg.ravel())[0, 1] > 0.5  # …but it is the same face


def test_mapping_network(preview, fixtures_dir):
    z = torch.from_numpy(draw("input:z#map", (1, 512))).to(torch.float32)
    with torch.inference_mode():
        got = preview.generator.mapping(z).numpy()
    np.testing.assert_allclose(got, _expected(fixtures_dir, "mapping"), rtol=0, atol=1e-5)


def test_reduced_path_cache_is_bit_exact(preview, wplus):
    """Changing only late rows re-runs only the later stages; the result equals a fresh render exactly."""
    calls = []
    hooks = [m.register_forward_hook(lambda *_a, n=n: calls.append(n)) for n, m in
             [("conv1", preview.generator.conv1)] + [(f"convs.{j}", c) for j, c in enumerate(preview.generator.convs)]]
    try:
        preview.clear_cache()
        before = preview.render(wplus, 256)
        edited = wplus.copy()
        edited[0, 12:] += 0.3 * rule_wplus("input:wplus#late")[0, 12:]
        calls.clear()
        cached = preview.render(edited, 256)
        assert calls == ["convs.11"]  # rows ≥ 12: only the last 256² conv (row 12) and to_rgbs.5 re-run
        preview.clear_cache()
        calls.clear()
        fresh = preview.render(edited, 256)
        assert "conv1" in calls
        assert np.array_equal(cached, fresh)
        assert not np.array_equal(cached, before)
    finally:
        for h in hooks:
            h.remove()
        preview.clear_cache()


def _upfirdn_cases(fixtures_dir):
    return json.loads((fixtures_dir / "stylegan2_upfirdn2d_cases.json").read_text())["cases"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_upfirdn2d_cases(fixtures_dir, dtype):
    cases = _upfirdn_cases(fixtures_dir)
    assert len(cases) == 10
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for c in cases:
        x = torch.tensor(c["input"], dtype=torch.float64).reshape(c["input_shape"])
        k = torch.tensor(c["kernel"], dtype=torch.float64).reshape(c["kernel_shape"])
        np.testing.assert_array_equal(x.numpy(), draw(c["input_key"], c["input_shape"]))
        got = upfirdn2d(
            x.to(dtype), k.to(dtype), up=(c["up_x"], c["up_y"]), down=(c["down_x"], c["down_y"]),
            pad=(c["pad_x0"], c["pad_x1"], c["pad_y0"], c["pad_y1"]),
        )
        want = np.asarray(c["output"], dtype=np.float64).reshape(c["output_shape"])
        assert tuple(got.shape) == tuple(c["output_shape"]), c["case"]
        np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=tol, err_msg=f"case {c['case']}")


def test_fused_leaky_relu_semantics():
    x = torch.tensor([[-2.0, 0.0, 3.0]])[:, :, None, None].expand(2, 3, 2, 2)
    bias = torch.tensor([1.0, -1.0, 0.5])
    got = fused_leaky_relu(x, bias)
    v = torch.tensor([-1.0, -1.0, 3.5])
    want = torch.where(v > 0, v, 0.2 * v) * 2**0.5
    torch.testing.assert_close(got[0, :, 0, 0], want)
    torch.testing.assert_close(fused_leaky_relu(torch.tensor([[-1.0, 2.0]])), torch.tensor([[-0.2, 2.0]]) * 2**0.5)
