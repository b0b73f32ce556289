"""The torch CUDA fast path on a real GPU (tiny models): CUDA graphs, channels_last, inductor, fp16 VAE guard.

Skipped without CUDA. Run on a GPU machine: `pytest tests/gpu/test_fastpath_gpu.py -q` (≈1–2 min, most of it
inductor compiling the tiny UNet and VAE decoder).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from engine.testing.tiny import cached_tiny_models

    return cached_tiny_models(tmp_path_factory.getbasetemp())


def _components(tiny):
    from engine.networks.sd15 import load_sd15
    from engine.networks.wplus import load_wplus_adapter

    comps = load_sd15(tiny / "sd15")
    return comps, load_wplus_adapter(comps.unet, tiny / "wplus_adapter.bin")


def _runners(tiny, dtype=torch.float16, **fast):
    from engine.backends.torch_backend import FastPathOptions, TorchRunners

    comps, wproj = _components(tiny)
    return TorchRunners(comps, wproj, device="cuda", dtype=dtype, fast=FastPathOptions(**fast))


def _inputs(seed: int, dtype=torch.float16) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(2, 4, 8, 8, generator=g).to("cuda", dtype),
        "timestep": torch.tensor([500.0 + seed, 500.0 + seed], device="cuda"),
        "text_embeds": torch.randn(2, 77, 768, generator=g).to("cuda", dtype),
        "wplus_tokens": torch.randn(2, 4, 768, generator=g).to("cuda", dtype),
    }


def _assert_close(got, want, rel: float = 1e-2) -> None:
    err = (got.float() - want.float()).abs().max().item()
    assert err <= rel * want.float().abs().max().item() + 1e-3, err


def test_channels_last_on_cuda(tiny):
    runners = _runners(tiny)
    unet, vae = runners.components.unet, runners.components.vae
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert runners.fast_status()["channels_last"] == "on"


def test_cuda_graph_replay_matches_eager_and_a_scale_change_is_a_buffer_write(tiny):
    runners = _runners(tiny, cuda_graph=True)
    unet, step = runners.get("unet"), runners.unet_step
    with torch.no_grad():
        x = _inputs(1)
        first = unet(**x, wplus_scale=0.0)["noise_pred"]
        _assert_close(first, runners.unet_module(**x, wplus_scale=0.0))
        kept = first.clone()
        assert step.captures == 1
        for i, scale in enumerate((0.8, 0.3, 1.0)):
            x = _inputs(2 + i)
            got = unet(**x, wplus_scale=scale)["noise_pred"]
            _assert_close(got, runners.unet_module(**x, wplus_scale=scale))
        # One graph without the W+ branch, one with the scale buffer; new inputs and scales reuse them.
        assert step.captures == 2
        assert step.graph_count == 2
        # The returned tensor is a copy: later replays do not overwrite it.
        assert torch.equal(first, kept)
        # The W+ branch really is in the second graph: its scale changes the output.
        x = _inputs(9)
        a = unet(**x, wplus_scale=0.2)["noise_pred"]
        b = unet(**x, wplus_scale=1.0)["noise_pred"]
        assert (a - b).abs().max().item() > 1e-3
    assert runners.fast_status()["cuda_graph"] == "on (2 kept, 2 captured)"


def test_cuda_graph_pipeline_matches_eager_pipeline_and_fp16_is_close_to_fp32(tiny):
    from engine.api import GenerateRequest
    from engine.backends.torch_backend import FastPathOptions
    from engine.pipeline.generate import WPlusPipeline
    from engine.testing.tiny import tiny_wplus

    req = GenerateRequest(steps=10, start_ratio=30.0, width=64, height=64, wplus=tiny_wplus(1), seed=5)
    images = {}
    for name, dtype, fast in (
        ("fp32", torch.float32, FastPathOptions(channels_last=False)),
        ("fp16", torch.float16, FastPathOptions()),
        ("fp16_graph", torch.float16, FastPathOptions(cuda_graph=True)),
    ):
        comps, wproj = _components(tiny)
        pipe = WPlusPipeline.from_components(comps, wproj, device="cuda", dtype=dtype, fast=fast)
        imgs, _, _ = pipe.render_float(req)
        images[name] = imgs[0]
        if name == "fp16_graph":
            status = pipe.runners.fast_status()
            assert status["cuda_graph"].startswith("on (")
            assert "captured" in status["cuda_graph"]
    ref = images["fp32"]
    variation = float(np.abs(ref - ref.mean()).mean())  # how much the image itself varies
    assert variation > 1e-3, "the tiny pipeline must draw something for this comparison to mean anything"
    for name in ("fp16", "fp16_graph"):
        diff = np.abs(images[name] - ref)
        assert np.isfinite(images[name]).all()
        # fp16 error: under 5 % of the image's own variation (or under one 8-bit level), never a wild pixel.
        assert diff.mean() <= max(0.05 * variation, 1 / 255), (name, diff.mean(), variation)
        assert diff.max() <= 0.1, (name, diff.max())
    np.testing.assert_allclose(images["fp16_graph"], images["fp16"], atol=2e-2)


@pytest.mark.parametrize("graphs", [False, True], ids=["compiled", "compiled+graph"])
def test_compiled_unet_and_vae_match_eager(tiny, graphs):
    runners = _runners(tiny, compile=True, compile_mode="default", cuda_graph=graphs)
    unet = runners.get("unet")
    with torch.no_grad():
        for i, scale in enumerate((0.0, 0.7, 0.4)):
            x = _inputs(20 + i)
            _assert_close(unet(**x, wplus_scale=scale)["noise_pred"], runners.unet_module(**x, wplus_scale=scale))
        z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)).to("cuda", torch.float16)
        _assert_close(runners.get("vae_decoder")(latent=z)["image"], runners.vae_decode.module(z))
    status = runners.fast_status()
    assert status["compile_unet"] == "on", status
    assert status["compile_vae"] == "on", status
    if graphs:
        assert runners.unet_step.captures == 2, status


def test_fp16_vae_overflow_on_cuda_falls_back_to_float32(tiny):
    from engine.backends.torch_backend import FastPathOptions, TorchRunners

    comps, wproj = _components(tiny)
    with torch.no_grad():
        comps.vae.decoder.conv_in.weight.mul_(1e5)  # activations ~1.3e5 > 65504, weights still fp16-representable
    runners = TorchRunners(comps, wproj, device="cuda", dtype=torch.float16, fast=FastPathOptions())
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)).to("cuda", torch.float16)
    with torch.no_grad():
        assert not torch.isfinite(runners.vae_decode.module(z)).all()
        want = copy.deepcopy(runners.vae_decode.module).float()(z.float())
        image = runners.get("vae_decoder")(latent=z)["image"]
    assert image.dtype == torch.float32
    assert torch.isfinite(image).all()
    torch.testing.assert_close(image, want, rtol=1e-4, atol=1e-4)
    assert runners.vae_decode.upcast
