"""ONNX Runtime CUDA (IO binding) and TensorRT on a real GPU, against torch. Skipped where absent.

Run on a GPU machine: `pytest tests/gpu/test_export_gpu.py -q` (needs onnxruntime-gpu for the CUDA EP
tests and tensorrt ≥ 10 for the engine tests).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from engine.backends.profiles import ShapeProfile
    from engine.networks.sd15 import load_sd15
    from engine.networks.wplus import load_wplus_adapter
    from engine.testing.tiny import write_tiny_models
    from export.to_onnx import export_onnx

    root = tmp_path_factory.mktemp("gpu_tiny")
    write_tiny_models(root)
    comps = load_sd15(root / "sd15")
    wproj = load_wplus_adapter(comps.unet, root / "wplus_adapter.bin")
    profile = ShapeProfile.dynamic(64, 64, 128, max_batch=2)
    out = root / "onnx"
    modules = {"unet": comps.unet, "vae_decoder": comps.vae, "text_encoder": comps.text_encoder,
               "identity_proj": wproj}
    for name, module in modules.items():
        export_onnx(name, module, out / f"{name}.onnx", profile=profile)
    return modules, out, profile


@pytest.mark.skipif(not _ort_cuda(), reason="needs onnxruntime-gpu")
@pytest.mark.parametrize("component", ["unet", "vae_decoder", "text_encoder", "identity_proj"])
def test_ort_cuda_io_binding_matches_torch(tiny, component):
    from engine.backends.ort_backend import OrtRunners
    from engine.backends.torch_modules import component_module
    from export.components import example_inputs, run_torch
    from export.verify import Tolerance, compare

    modules, out, profile = tiny
    runners = OrtRunners(out, "cuda")
    runner = runners.get(component)
    assert runner.providers[0] == "CUDAExecutionProvider"
    inputs = example_inputs(component, profile, seed=0)
    want = run_torch(component, component_module(component, modules[component]), inputs)
    got = runner(**{k: v.cuda() for k, v in inputs.items()})
    for v in got.values():
        assert v.is_cuda  # IO binding: the result never left the GPU
    # cuDNN/cuBLAS (TF32 off by default in ORT) vs CPU torch: a little looser than CPU↔CPU
    checks = compare(component, want, got, tolerance=Tolerance(1e-3, 1e-4))
    assert all(c.ok for c in checks), checks


@pytest.mark.trt
@pytest.mark.skipif(not HAS_TRT, reason="needs tensorrt")
def test_tensorrt_engine_build_cache_and_run(tiny, tmp_path):
    from engine.backends.torch_modules import component_module
    from engine.backends.trt_backend import TrtRunners
    from engine.backends.trt_build import EngineCache
    from export.components import example_inputs, run_torch
    from export.verify import compare

    modules, out, profile = tiny
    phases = []
    runners = TrtRunners(out, tmp_path / "engines", precision="fp16",
                         progress=lambda phase, frac: phases.append((phase, frac)))
    runner = runners.get("unet")
    assert phases, "the IProgressMonitor reported nothing"
    plans = list((tmp_path / "engines").glob("unet-fp16-*.plan"))
    assert len(plans) == 1
    inputs = example_inputs("unet", profile, seed=0)
    want = run_torch("unet", component_module("unet", modules["unet"]), inputs)
    got = runner(**{k: v.cuda() for k, v in inputs.items()})
    assert all(c.ok for c in compare("unet", want, got, precision="fp16"))
    # delayed conditioning: a Python float scale, and 0 gives a different result than 1
    base = {k: v.cuda() for k, v in inputs.items() if k != "wplus_scale"}
    a = runner(**base, wplus_scale=0.0)["noise_pred"]
    b = runner(**base, wplus_scale=1.0)["noise_pred"]
    assert (a - b).abs().max() > 1e-2
    # second open: from the cache, no build
    phases.clear()
    TrtRunners(out, tmp_path / "engines", precision="fp16",
               progress=lambda phase, frac: phases.append(phase)).get("unet")
    assert phases == []
    assert EngineCache(tmp_path / "engines").recorded_key(plans[0]).gpu_name == torch.cuda.get_device_name(0)


@pytest.mark.trt
@pytest.mark.skipif(not HAS_TRT, reason="needs tensorrt")
def test_tensorrt_refuses_a_shape_outside_its_profile(tiny, tmp_path):
    from engine.backends.trt_backend import TrtRunners
    from engine.errors import InvalidInput

    _modules, out, _profile = tiny
    runner = TrtRunners(out, tmp_path / "engines", precision="fp16").get("vae_decoder")
    with pytest.raises(InvalidInput, match="image height 64–128 px; this call needs image height 256 px"):
        runner(latent=torch.zeros(1, 4, 32, 8, device="cuda"))
