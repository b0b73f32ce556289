"""StyleGAN2 preview on a reduced-channel generator (same code path, same 18 W+ rows, wbn-1d weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.config import EngineConfig
from engine.errors import InvalidInput, ModelCorrupt, ModelMissing
from engine.networks.stylegan2.loader import generator_from_state
from engine.networks.stylegan2.modules import GeneratorShape, ModulatedConv2d
from engine.networks.stylegan2.ops import upfirdn2d
from engine.pipeline.face_preview import StyleGANPreview, resize_like_official, to_uint8
from engine.testing.stylegan2 import rule_decoder_state, rule_wplus, write_e4e_checkpoint
from engine.testing.wbn import draw

SMALL = GeneratorShape.reduced(16)  # widths 32 … 2, still 1024² and 18×512 W+


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_state():
    return rule_decoder_state(SMALL)


@pytest.fixture(scope="module")
def small(small_state):
    return StyleGANPreview.from_state_dict(small_state)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, small_state):
    return write_e4e_checkpoint(tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt", small_state)


@pytest.fixture(scope="module")
def no_decoder_file(tmp_path_factory):
    return write_e4e_checkpoint(tmp_path_factory.mktemp("nodec") / "e4e_ffhq_encode.pt", None)


W = rule_wplus("input:wplus#unit")


# -- the activation-modulation form equals the official per-sample weight form ----------------------


def _official_modconv(conv: ModulatedConv2d, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """STYLEGAN2.md §2.2 literally: per-sample modulated (+demodulated) weights, grouped conv."""
    b, cin, h, wd = x.shape
    weight = conv.weight  # 1×Cout×Cin×k×k
    cout, k = weight.shape[1], weight.shape[-1]
    s = w @ (conv.modulation.weight * (1 / math.sqrt(w.shape[1]))).t() + conv.modulation.bias
    wp = (1 / math.sqrt(cin * k * k)) * weight * s[:, None, :, None, None]
    if conv.demodulate:
        wp = wp / torch.sqrt((wp**2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    if conv.upsample:
        wt = wp.transpose(1, 2).reshape(b * cin, cout, k, k)
        y = F.conv_transpose2d(x.reshape(1, b * cin, h, wd), wt, stride=2, groups=b)
        y = y.reshape(b, cout, *y.shape[-2:])
        return upfirdn2d(y, conv.blur.kernel, pad=(1, 1))
    y = F.conv2d(x.reshape(1, b * cin, h, wd), wp.reshape(b * cout, cin, k, k), padding=k // 2, groups=b)
    return y.reshape(b, cout, h, wd)


@pytest.mark.parametrize(("name", "res"), [("conv1", 4), ("convs.0", 4), ("convs.1", 8), ("to_rgbs.0", 8)])
def test_activation_modulation_equals_weight_modulation(small_state, name, res):
    gen = generator_from_state(small_state).double()
    conv = gen.get_submodule(f"{name}.conv")
    x = torch.from_numpy(draw(f"test:x#{name}", (2, conv.weight.shape[2], res, res)))
    w = torch.from_numpy(draw(f"test:w#{name}", (2, 512)))
    with torch.no_grad():
        got = conv(x, w)
        want = _official_modconv(conv, x, w)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-12


def test_skip_upsampling_is_the_zero_border_closed_form():
    x = torch.from_numpy(draw("test:skip", (1, 3, 5, 5)))
    k = torch.from_numpy(np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 16.0)
    got = upfirdn2d(x, k, up=2, pad=(2, 1))
    xp = F.pad(x, (1, 1, 1, 1))  # x[-1] = x[H] = 0
    rows = torch.stack([0.25 * xp[:, :, :-2] + 0.75 * xp[:, :, 1:-1], 0.75 * xp[:, :, 1:-1] + 0.25 * xp[:, :, 2:]], 3)
    rows = rows.reshape(1, 3, 10, 7)
    out = torch.stack([0.25 * rows[..., :-2] + 0.75 * rows[..., 1:-1], 0.75 * rows[..., 1:-1] + 0.25 * rows[..., 2:]], -1)
    out = out.reshape(1, 3, 10, 10)
    assert (got - out).abs().max().item() < 1e-12


# -- rendering ----------------------------------------------------------------------------------------


def test_render_sizes_and_paths(small):
    reduced = small.render(W, 256)
    assert reduced.shape == (256, 256, 3)
    assert reduced.dtype == np.uint8
    assert np.array_equal(reduced, to_uint8(small.render_float(W, 256)))
    full = to_uint8(small.render_float(W, 1024))
    assert np.array_equal(small.render(W, 1024), full)
    assert np.array_equal(small.render(W, 512), resize_like_official(full, 512))
    official = small.render(W, 256, full=True)
    assert np.array_equal(official, np.asarray(Image.fromarray(full).resize((256, 256), Image.Resampling.BICUBIC)))
    assert not np.array_equal(official, reduced)
    for level in (64, 128):
        assert np.array_equal(small.render(W, level), to_uint8(small.render_float(W, level)))


def test_uint8_conversion_truncates_like_tensor2pil():
    img = np.array([-2.0, -1.0, 0.0, 0.999, 1.0, 7.0], np.float32).reshape(1, 1, 6).repeat(3, 0)
    assert to_uint8(img)[0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_batch_module_matches_single_renders(small):
    w2 = rule_wplus("input:wplus#unit2")
    with torch.inference_mode():
        out = small.module(torch.from_numpy(np.concatenate([W, w2])))
    assert out.shape == (2, 3, 256, 256)
    np.testing.assert_allclose(out[0].numpy(), small.render_float(W, 256), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[1].numpy(), small.render_float(w2, 256), atol=1e-5, rtol=0)


def test_channels_last_only_changes_rounding(small_state):
    a = StyleGANPreview.from_state_dict(small_state, channels_last=True).render_float(W, 256)
    b = StyleGANPreview.from_state_dict(small_state, channels_last=False).render_float(W, 256)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_noise_is_the_stored_buffer_and_rendering_is_deterministic(small, small_state):
    first = small.render_float(W, 64)
    small.clear_cache()
    assert np.array_equal(first, small.render_float(W, 64))
    state = dict(small_state)
    state["noises.noise_3"] = torch.zeros_like(state["noises.noise_3"])
    assert not np.allclose(StyleGANPreview.from_state_dict(state).render_float(W, 64), first, atol=1e-3)


@pytest.mark.parametrize("rows", [[0], [1], [5], [9, 10], [12], [13], [17], []])
def test_stage_cache_is_bit_exact(small_state, rows):
    cached = StyleGANPreview.from_state_dict(small_state, cache=True)
    fresh = StyleGANPreview.from_state_dict(small_state, cache=False)
    before = cached.render(W, 256)
    edited = W.copy()
    for r in rows:
        edited[0, r] += 0.5 * rule_wplus(f"input:wplus#row{r}")[0, r]
    calls = []
    cached.generator.conv1.register_forward_hook(lambda *_: calls.append("conv1"))
    got = cached.render(edited, 256)
    want = fresh.render(edited, 256)
    assert np.array_equal(got, want)
    assert np.array_equal(cached.render_float(edited, 256), fresh.render_float(edited, 256))
    assert calls == (["conv1"] if rows and min(rows) == 0 else [])
    if rows and min(rows) <= 13:  # rows ≥ 14 are not read by the 256² path
        assert not np.array_equal(got, before)
    else:
        assert np.array_equal(got, before)


# -- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [np.full((1, 18, 512), np.nan, np.float32), np.zeros((1, 17, 512), np.float32), np.zeros((18, 511), np.float32)],
)
def test_bad_wplus_is_refused(small, bad):
    with pytest.raises(InvalidInput):
        small.render(bad, 256)


def test_bad_size_is_refused(small):
    with pytest.raises(InvalidInput, match="256, 512, 1024"):
        small.render(W, 300)


def test_state_without_decoder_disables_the_preview():
    with pytest.raises(ModelMissing, match="preview disabled"):
        StyleGANPreview.from_state_dict({})


def test_checkpoint_without_decoder_keys_disables_the_preview(no_decoder_file, tmp_path):
    with pytest.raises(ModelMissing, match=r"preview disabled: .*no StyleGAN2 decoder") as info:
        StyleGANPreview.from_checkpoint(no_decoder_file)
    assert "decoder." in info.value.user_message
    assert info.value.hint


def test_the_service_finds_the_default_name_converts_it_and_reports_a_missing_file(small_file, tmp_path):
    from engine.models.service import ModelService

    models = tmp_path / "models"
    models.mkdir()
    (models / "e4e_ffhq_encode.pt").write_bytes(small_file.read_bytes())
    service = ModelService(EngineConfig(models_dir=models, device="cpu"))
    preview = service.load("stylegan_preview")
    assert preview.generator.shape == SMALL
    assert (models / "e4e_ffhq_encode.safetensors").is_file()  # converted once: later loads read no pickle
    assert service.load("stylegan_preview") is preview  # cached per (component, file, backend, device, dtype)
    with pytest.raises(ModelMissing, match=r"e4e face encoder is missing \(expected at .*e4e_ffhq_encode\.pt\)"):
        ModelService(EngineConfig(models_dir=tmp_path / "empty", device="cpu")).load("stylegan_preview")
    # a pickle the user named, with no writable models folder: converted into the cache dir, once
    given = ModelService(EngineConfig(models_dir=tmp_path / "empty", e4e=str(small_file), device="cpu",
                                      cache_dir=tmp_path / "cache"))
    via_e4e = given.load("stylegan_preview")
    [converted] = (tmp_path / "cache").rglob("*.safetensors")
    assert converted.name == "e4e_ffhq_encode.safetensors"
    assert not (tmp_path / "empty").exists()
    assert np.array_equal(via_e4e.render(W, 256), preview.render(W, 256))


def test_incomplete_or_misshapen_decoder_is_corrupt(small_state):
    missing = {k: v for k, v in small_state.items() if k != "convs.3.noise.weight"}
    with pytest.raises(ModelCorrupt, match=r"preview disabled.*convs\.3\.noise\.weight"):
        StyleGANPreview.from_state_dict(missing)
    misshapen = dict(small_state)
    misshapen["to_rgbs.2.bias"] = torch.zeros(3)
    with pytest.raises(ModelCorrupt, match=r"preview disabled.*to_rgbs\.2\.bias"):
        StyleGANPreview.from_state_dict(misshapen)
    no_input = {k: v for k, v in small_state.items() if k != "input.input"}
    with pytest.raises(ModelCorrupt, match="preview disabled"):
        StyleGANPreview.from_state_dict(no_input)
    nan = dict(small_state)
    nan["conv1.conv.weight"] = torch.full_like(nan["conv1.conv.weight"], float("nan"))
    with pytest.raises(ModelCorrupt, match="NaN"):
        StyleGANPreview.from_state_dict(nan)


# -- CLI ------------------------------------------------------------------------------------------------


def test_cli_preview_npy_and_pth(small_file, tmp_path, capsys):
    from engine.cli import main

    npy = tmp_path / "w.npy"
    np.save(npy, W)
    pth = tmp_path / "w.pth"
    torch.save(torch.from_numpy(W).requires_grad_(True), pth)  # like the official CUDA-saved files
    out = tmp_path / "out" / "face.png"
    args = ["--models-dir", str(tmp_path), "preview", str(npy), "-o", str(out), "--e4e", str(small_file)]
    assert main(args) == 0
    got = np.asarray(Image.open(out))
    reference = StyleGANPreview.from_checkpoint(small_file).render(W, 256)
    assert np.array_equal(got, reference)
    out2 = tmp_path / "face512.png"
    assert main([*args[:3], str(pth), "-o", str(out2), "--e4e", str(small_file), "--size", "512"]) == 0
    assert np.asarray(Image.open(out2)).shape == (512, 512, 3)
    assert not list(tmp_path.glob("**/*.part"))
    assert "reduced 256² path" in capsys.readouterr().out


def test_cli_refuses_nan_and_missing_decoder(small_file, no_decoder_file, tmp_path, capsys):
    from engine.cli import main

    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((1, 18, 512), np.nan, np.float32))
    out = tmp_path / "face.png"
    assert main(["preview", str(bad), "-o", str(out), "--e4e", str(small_file)]) == 1
    assert "NaN" in capsys.readouterr().err
    good = tmp_path / "w.npy"
    np.save(good, W)
    assert main(["preview", str(good), "-o", str(out), "--e4e", str(no_decoder_file)]) == 1
    assert "preview disabled" in capsys.readouterr().err
    assert not out.exists()
