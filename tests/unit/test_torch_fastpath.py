"""The torch fast path on the CPU: defaults change nothing, the fp16 VAE overflow guard, compile wrapping, SDPA.

The CUDA-only parts (channels_last, CUDA graphs, inductor kernels) are in tests/gpu/test_fastpath_gpu.py.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch.overrides import TorchFunctionMode

from engine.backends.torch_backend import FastPathOptions, TorchRunners
from engine.config import EngineConfig

# Multiplies the tiny VAE decoder's first conv: its activations reach ~1.3e5 (> fp16's 65504) while every
# weight stays representable in fp16 (max ≈ 1.7e4), so the overflow happens inside the network as in
# SD1.5's VAE, not in the cast of the input or the weights.
OVERFLOW_GAIN = 1e5


pytestmark = pytest.mark.usefixtures("one_torch_thread")




def _components(tiny):
    from engine.networks.sd15 import load_sd15
    from engine.networks.wplus import load_wplus_adapter

    comps = load_sd15(tiny / "sd15")
    return comps, load_wplus_adapter(comps.unet, tiny / "wplus_adapter.bin")


def _unet_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    return {
        "sample": torch.randn(2, 4, 8, 8, generator=g).to(dtype),
        "timestep": torch.tensor([500.0, 500.0]),
        "text_embeds": torch.randn(2, 77, 768, generator=g).to(dtype),
        "wplus_tokens": torch.randn(2, 4, 768, generator=g).to(dtype),
    }


def _latent():
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))


def test_flags_on_cpu_leave_every_output_bit_identical(tiny):
    comps, wproj = _components(tiny)
    # channels_last and CUDA graphs are CUDA-only: asked for on the CPU they must not change one bit.
    runners = TorchRunners(comps, wproj, device="cpu", dtype=torch.float32,
                           fast=FastPathOptions(channels_last=True, cuda_graph=True))
    x = _unet_inputs()
    with torch.no_grad():
        for scale in (0.0, 0.8):
            want = runners.unet_module(**x, wplus_scale=scale)
            got = runners.get("unet")(**x, wplus_scale=scale)["noise_pred"]
            assert torch.equal(got, want)
        z = _latent()
        assert torch.equal(runners.get("vae_decoder")(latent=z)["image"], comps.vae.decode(z).sample)
    assert comps.unet.conv_in.weight.is_contiguous()
    status = runners.fast_status()
    assert status["channels_last"] == "off"
    assert status["cuda_graph"].startswith("off (needs a CUDA device")
    assert status["vae_decode"] == "float32"


def test_engine_config_reaches_the_runners(tiny):
    from engine.models.service import ModelService
    from engine.pipeline.generate import WPlusPipeline
    from engine.testing.tiny import tiny_config

    base = tiny_config(tiny)
    assert FastPathOptions.from_config(base) == FastPathOptions()
    cfg = EngineConfig(**{**base.__dict__, "cuda_graph": True, "compile": True, "compile_mode": "default",
                          "channels_last": False})
    pipe = WPlusPipeline.from_service(ModelService(cfg))
    assert pipe.runners.fast == FastPathOptions(channels_last=False, compile=True, compile_mode="default",
                                                cuda_graph=True)
    # Nothing is compiled until the first call; this test does not call it (inductor on CPU is slow).
    assert pipe.runners.fast_status()["compile_unet"] == "on"


def test_fp16_vae_overflow_falls_back_to_float32_once(tiny, caplog):
    comps, wproj = _components(tiny)
    with torch.no_grad():
        comps.vae.decoder.conv_in.weight.mul_(OVERFLOW_GAIN)
    fp32_vae = copy.deepcopy(comps.vae)
    runners = TorchRunners(comps, wproj, device="cpu", dtype=torch.float16)
    decode = runners.get("vae_decoder")
    z = _latent()
    with torch.no_grad():
        low = runners.vae_decode.module(z.half())
        assert low.dtype == torch.float16
        assert not torch.isfinite(low).all(), "the test VAE must really overflow in float16"
        # What a float32 decode of the loaded (fp16-rounded) weights gives.
        want = copy.deepcopy(runners.vae_decode.module).float()(z.half().float())
        with caplog.at_level(logging.WARNING, logger="engine.backends.torch_fastpath"):
            first = decode(latent=z.half())["image"]
            second = decode(latent=z.half())["image"]
        original = fp32_vae.decode(z).sample
    assert torch.isfinite(first).all()
    assert first.dtype == torch.float32
    assert torch.equal(first, want)
    assert torch.equal(second, want)
    # The fp16-rounded weights decode to (nearly) what the float32 VAE gives.
    assert (first - original).abs().max().item() < 0.05
    overflow_logs = [r for r in caplog.records if "overflowed" in r.getMessage()]
    assert len(overflow_logs) == 1
    assert "float16 VAE decode overflowed" in overflow_logs[0].getMessage()
    assert runners.vae_decode.upcast
    assert runners.vae_decode.fallbacks == 2
    assert runners.fast_status()["vae_decode"].startswith("float16, overflowed: float32 since")


def test_fp16_vae_without_overflow_stays_fp16(tiny):
    comps, wproj = _components(tiny)
    runners = TorchRunners(comps, wproj, device="cpu", dtype=torch.float16)
    z = _latent()
    with torch.no_grad():
        image = runners.get("vae_decoder")(latent=z)["image"]
        want = comps.vae.decode(z.half()).sample
    assert image.dtype == torch.float16
    assert torch.equal(image, want)
    assert not runners.vae_decode.upcast
    assert runners.vae_decode._fp32 is None
    assert runners.fast_status()["vae_decode"] == "float16 (checked for overflow)"


class _CountingBackend:
    """A torch.compile backend that runs the traced graph as is and counts compilations."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_compiled_unet_and_vae_equal_eager_and_a_slider_move_does_not_recompile(tiny):
    comps, wproj = _components(tiny)
    backend = _CountingBackend()
    runners = TorchRunners(comps, wproj, device="cpu", dtype=torch.float32,
                           fast=FastPathOptions(compile=True, compile_backend=backend))
    x = _unet_inputs()
    unet = runners.get("unet")
    with torch.no_grad():
        for scale in (0.0, 0.7):
            got = unet(**x, wplus_scale=scale)["noise_pred"]
            want = runners.unet_module(**x, wplus_scale=scale)
            assert (got - want).abs().max().item() <= 1e-6
        traced = backend.graphs
        assert traced >= 2  # the scale-0 variant (no W+ branch) and the tensor-scale variant
        got = unet(**x, wplus_scale=0.4)["noise_pred"]
        assert (got - runners.unet_module(**x, wplus_scale=0.4)).abs().max().item() <= 1e-6
        assert backend.graphs == traced, "a new slider value must reuse the compiled graph"
        z = _latent()
        image = runners.get("vae_decoder")(latent=z)["image"]
        assert (image - comps.vae.decode(z).sample).abs().max().item() <= 1e-6
    assert backend.graphs > traced
    status = runners.fast_status()
    assert status["compile_unet"] == "on"
    assert status["compile_vae"] == "on"


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no kernels for you")


def test_a_failing_compile_falls_back_to_eager(tiny, caplog):
    comps, wproj = _components(tiny)
    runners = TorchRunners(comps, wproj, device="cpu", dtype=torch.float32,
                           fast=FastPathOptions(compile=True, compile_backend=_failing_backend))
    z = _latent()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="engine.backends.torch_fastpath"):
        image = runners.get("vae_decoder")(latent=z)["image"]
        again = runners.get("vae_decoder")(latent=z)["image"]
        want = comps.vae.decode(z).sample
    assert torch.equal(image, want)
    assert torch.equal(again, want)
    failures = [r.getMessage() for r in caplog.records if "compiled VAE decoder failed" in r.getMessage()]
    assert len(failures) == 1
    assert "no kernels for you" in failures[0]
    assert runners.fast_status()["compile_vae"].startswith("failed, eager (")
    assert runners.fast_status()["compile_unet"] == "on"  # not called yet: its own fallback is separate


class _Calls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_every_attention_runs_through_sdpa(tiny):
    from engine.networks.wplus import wplus_processors

    comps, wproj = _components(tiny)
    runners = TorchRunners(comps, wproj, device="cpu", dtype=torch.float32)
    x = _unet_inputs()
    n_attn, n_wplus = len(comps.unet.attn_processors), len(wplus_processors(comps.unet))
    with torch.no_grad():
        for scale, expected in ((0.0, n_attn), (0.5, n_attn + n_wplus)):
            with _Calls() as calls:
                runners.get("unet")(**x, wplus_scale=scale)
            assert calls.names.count("scaled_dot_product_attention") == expected
            assert not {"bmm", "baddbmm", "softmax"} & set(calls.names)
        with _Calls() as calls:
            runners.get("vae_decoder")(latent=_latent())
    decoder_attn = [k for k in comps.vae.attn_processors if k.startswith("decoder.")]
    assert decoder_attn
    assert calls.names.count("scaled_dot_product_attention") == len(decoder_attn)
    assert not {"bmm", "baddbmm", "softmax"} & set(calls.names)
