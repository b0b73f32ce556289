"""Opt-in (`slow`): full-size e4e, SD1.5 UNet + W+ adapter and SD1.5 VAE decoder (rule-wbn-1 weights),
exported to ONNX and run on ONNX Runtime CPU, against torch and the official fixtures.

Prints export time, file sizes, ORT run time and peak RSS for docs/PERFORMANCE.md. Needs ~16 GB RAM
and ~8 GB of temporary disk; the UNet (3.4 GB fp32) goes to external data. Run:
`WPLUS_SLOW=1 pytest tests/export/test_export_fullsize.py -q -s`.
"""

from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest
import torch

from engine.backends.profiles import DimRange, ShapeProfile
from engine.testing.wbn import rule_input
from export.to_onnx import export_onnx
from export.verify import verify_onnx

pytestmark = pytest.mark.slow

# Batch 1..2, latent 16×16 (the fixtures' size) up to 64×64 (512 px).
PROFILE = ShapeProfile("fullsize-test", (("B", DimRange(1, 1, 2)), ("H", DimRange(16, 16, 64)),
                                          ("W", DimRange(16, 16, 64))))


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _report(what: str, result, t_verify: float) -> None:
    size = result.info.onnx_size + max(result.info.external_size, 0)
    print(f"\n[fullsize] {what}: export {result.seconds:.1f} s, {size / 1e9:.2f} GB "
          f"(external data: {result.info.external_data or 'no'}), ORT verify {t_verify:.1f} s, "
          f"peak RSS so far {_rss_gb():.1f} GB")


def _meta(cls, config):
    with torch.device("meta"):
        return cls.from_config(config)


def _fill_rule(module):
    from engine.testing.official_files import rule_tensors

    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(rule_tensors(shapes), strict=True, assign=True)
    return module.eval()


def test_fullsize_e4e(fixtures_dir, tmp_path):
    from engine.backends.ort_backend import OrtRunners
    from engine.networks.e4e import load_e4e
    from engine.testing.official_files import write_official_e4e

    torch.set_num_threads(min(2, torch.get_num_threads()))
    manifest = json.loads((fixtures_dir / "e4e_manifest.json").read_text())
    path = write_official_e4e(tmp_path / "e4e_ffhq_encode.pt", {e["key"]: tuple(e["shape"]) for e in manifest["keys"]})
    model = load_e4e(path)
    res = export_onnx("face_encoder", model, tmp_path / "onnx" / "face_encoder.onnx", profile=PROFILE)
    t = time.perf_counter()
    report = verify_onnx("face_encoder", model, res.path)[0]
    _report("e4e encoder", res, time.perf_counter() - t)
    print("\n".join(report.lines()))
    report.raise_for_failure()
    x = torch.from_numpy(rule_input("input:e4e_image", (1, 3, 256, 256), "tanh").astype(np.float32))
    got = OrtRunners(tmp_path / "onnx").get("face_encoder")(image=x)["wplus"].numpy()
    assert np.abs(got - np.load(fixtures_dir / "e4e_expected.npy")).max() <= 1e-4


def test_fullsize_unet_with_adapter(fixtures_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from engine.backends.ort_backend import OrtRunners
    from engine.networks.wplus import load_wplus_adapter
    from engine.testing.official_files import write_official_adapter

    torch.set_num_threads(min(2, torch.get_num_threads()))
    config = json.loads((fixtures_dir / "sd15_unet_config.json").read_text())
    unet = _fill_rule(_meta(UNet2DConditionModel, config))
    manifest = json.loads((fixtures_dir / "wplus_adapter_manifest.json").read_text())
    adapter = write_official_adapter(tmp_path / "wplus_adapter.bin",
                                     {e["key"]: e["shape"] for e in manifest["w_proj"]},
                                     {e["key"]: e["shape"] for e in manifest["wplus_adapter"]})
    wproj = load_wplus_adapter(unet, adapter)
    res = export_onnx("unet", unet, tmp_path / "onnx" / "unet.onnx", profile=PROFILE)
    assert res.info.external_data == "unet.onnx.data"
    t = time.perf_counter()
    report = verify_onnx("unet", unet, res.path)[0]
    _report("UNet + W+ adapter", res, time.perf_counter() - t)
    print("\n".join(report.lines()))
    report.raise_for_failure()

    sample = torch.from_numpy(rule_input("input:unet_sample", (1, 4, 16, 16)).astype(np.float32))
    text = torch.from_numpy(rule_input("input:text_embeds", (1, 77, 768)).astype(np.float32))
    with torch.no_grad():
        tokens = wproj(torch.from_numpy(rule_input("input:wplus", (1, 18, 512), "half").astype(np.float32)))
    runner = OrtRunners(tmp_path / "onnx").get("unet")
    for scale in (1.0, 0.0):
        t = time.perf_counter()
        got = runner(sample=sample, timestep=torch.tensor([500.0]), text_embeds=text, wplus_tokens=tokens,
                     wplus_scale=scale)["noise_pred"].numpy()
        print(f"[fullsize] UNet ORT CPU 1×4×16×16 forward: {time.perf_counter() - t:.2f} s (scale {scale})")
        assert np.abs(got - np.load(fixtures_dir / f"unet_expected_scale{scale}.npy")).max() <= 1e-4


def test_fullsize_vae_decoder(tmp_path):
    from diffusers import AutoencoderKL

    from engine.networks.sd15 import default_config_dir

    torch.set_num_threads(min(2, torch.get_num_threads()))
    config = json.loads((default_config_dir() / "vae" / "config.json").read_text())
    vae = _fill_rule(_meta(AutoencoderKL, config))
    res = export_onnx("vae_decoder", vae, tmp_path / "onnx" / "vae_decoder.onnx", profile=PROFILE)
    t = time.perf_counter()
    report = verify_onnx("vae_decoder", vae, res.path)[0]
    _report("VAE decoder", res, time.perf_counter() - t)
    print("\n".join(report.lines()))
    report.raise_for_failure()
