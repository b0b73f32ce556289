"""Bad exports and bad inputs: each refused with a message that says what is wrong and what to do."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch

from engine.backends.artifacts import WeightSource, read_artifact, sidecar_path
from engine.backends.ort_backend import OrtRunners
from engine.backends.profiles import DimRange, ShapeProfile
from engine.errors import EngineMismatch, InvalidInput, ModelCorrupt, ModelMissing
from engine.networks.wplus import WProj
from export.to_onnx import export_onnx
from export.verify import verify_onnx


def _copy_export(src_dir, component, dst_dir, as_component=None):
    name = f"{as_component or component}.onnx"
    shutil.copy(src_dir / f"{component}.onnx", dst_dir / name)
    shutil.copy(sidecar_path(src_dir / f"{component}.onnx"), sidecar_path(dst_dir / name))
    return dst_dir / name


def _unet_inputs(b=1, h=8, w=8):
    return {"sample": torch.zeros(b, 4, h, w), "timestep": torch.full((b,), 10.0),
            "text_embeds": torch.zeros(b, 77, 768), "wplus_tokens": torch.zeros(b, 4, 768),
            "wplus_scale": torch.tensor([1.0])}


def test_missing_onnx_file(tmp_path):
    with pytest.raises(ModelMissing, match=r"no ONNX export of unet .*unet\.onnx") as err:
        OrtRunners(tmp_path).get("unet")
    assert "python -m export onnx" in err.value.hint
    with pytest.raises(ModelMissing, match="does not exist"):
        read_artifact(tmp_path / "vae_decoder.onnx")


def test_truncated_onnx_file(exported, tmp_path):
    p = _copy_export(exported, "identity_proj", tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelCorrupt, match="truncated or was replaced") as err:
        OrtRunners(tmp_path).get("identity_proj")
    assert "Export it again" in err.value.hint


def test_garbage_onnx_file_with_matching_record(exported, tmp_path):
    """Same size as recorded, but not ONNX: ONNX Runtime's refusal becomes a sentence."""
    p = _copy_export(exported, "identity_proj", tmp_path)
    p.write_bytes(b"\x00garbage" * (p.stat().st_size // 8) + b"\x00" * (p.stat().st_size % 8))
    with pytest.raises(ModelCorrupt, match="damaged or not an ONNX model"):
        OrtRunners(tmp_path).get("identity_proj")
    with pytest.raises(ModelCorrupt, match="modified"):
        read_artifact(p, deep=True)


def test_missing_or_damaged_record(exported, tmp_path):
    p = _copy_export(exported, "identity_proj", tmp_path)
    sidecar_path(p).write_text("{not json")
    with pytest.raises(ModelCorrupt, match=r"export record .* is damaged"):
        OrtRunners(tmp_path).get("identity_proj")
    sidecar_path(p).unlink()
    with pytest.raises(ModelCorrupt, match="has no export record"):
        OrtRunners(tmp_path).get("identity_proj")


def test_file_of_another_component(exported, tmp_path):
    _copy_export(exported, "vae_decoder", tmp_path, as_component="unet")
    with pytest.raises(EngineMismatch, match="holds the vae_decoder component, not unet"):
        OrtRunners(tmp_path).get("unet")


def test_shape_outside_the_profile(exported):
    runner = OrtRunners(exported).get("unet")
    with pytest.raises(InvalidInput, match=r"built for image height 64–128 px; this call needs image height 256 px"):
        runner(**_unet_inputs(h=32))
    with pytest.raises(InvalidInput, match=r"batch 1–4; this call needs batch 5") as err:
        runner(**_unet_inputs(b=5))
    assert "--profile dynamic" in err.value.hint
    bad = _unet_inputs()
    bad["sample"] = torch.zeros(1, 3, 8, 8)
    with pytest.raises(InvalidInput, match="size 3 on axis 1; it must be 4"):
        runner(**bad)
    bad = _unet_inputs()
    bad["text_embeds"] = torch.zeros(2, 77, 768)
    with pytest.raises(InvalidInput, match="disagree on dimension B"):
        runner(**bad)
    bad = _unet_inputs()
    del bad["wplus_tokens"]
    with pytest.raises(InvalidInput, match="needs the input 'wplus_tokens'"):
        runner(**bad)


def test_static_profile_is_static_in_the_graph(tmp_path):
    torch.manual_seed(0)
    wproj = WProj().eval()
    profile = ShapeProfile("one", (("B", DimRange(1, 1, 1)),))
    res = export_onnx("identity_proj", wproj, tmp_path / "identity_proj.onnx", profile=profile)
    model = onnx.load(str(res.path))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 18, 512]
    runner = OrtRunners(tmp_path).get("identity_proj")
    with pytest.raises(InvalidInput, match="batch 1; this call needs batch 2"):
        runner(wplus=torch.zeros(2, 18, 512))
    assert verify_onnx("identity_proj", wproj, res.path)[0].ok


def test_stale_export_is_refused(tmp_path):
    """An export records the hash of its weights file; changing the file makes it stale."""
    torch.manual_seed(1)
    wproj = WProj().eval()
    weights = tmp_path / "adapter.safetensors"
    from safetensors.torch import save_file

    save_file(wproj.state_dict(), str(weights))
    out = tmp_path / "onnx"
    src = WeightSource.of_file("adapter", weights)
    export_onnx("identity_proj", wproj, out / "identity_proj.onnx", profile=ShapeProfile.static(64, 64),
                weights=[src])
    assert OrtRunners(out).get("identity_proj") is not None
    with pytest.raises(EngineMismatch, match=r"other weights than the current ones \(adapter changed\)"):
        OrtRunners(out, weights={"adapter": "0" * 64}).get("identity_proj")
    wproj.norm.bias.data += 1.0
    save_file(wproj.state_dict(), str(weights))
    with pytest.raises(EngineMismatch, match="stale: the adapter weights it was exported from have changed"):
        OrtRunners(out).get("identity_proj")
    record = json.loads(sidecar_path(out / "identity_proj.onnx").read_text())
    assert record["weights"][0]["sha256"] == src.sha256


def test_fp16_export_runs_and_is_judged_against_fp32(tmp_path):
    torch.manual_seed(2)
    wproj = WProj().eval()
    res = export_onnx("identity_proj", wproj, tmp_path / "identity_proj.onnx", profile=ShapeProfile.static(64, 64),
                      precision="fp16")
    model = onnx.load(str(res.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert wproj.norm.weight.dtype == torch.float32  # the caller's module is untouched
    report = verify_onnx("identity_proj", wproj, res.path)[0]
    assert report.ok, report.lines()
    assert report.outputs[0].max_abs > 1e-6  # really half precision, judged by the fp16 row of the table
    runners = OrtRunners(tmp_path)
    assert runners.dtype == torch.float16
    out = runners.get("identity_proj")(wplus=torch.zeros(1, 18, 512))
    assert out["wplus_tokens"].dtype == torch.float16


def test_export_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="opset 17 is below 18"):
        export_onnx("identity_proj", WProj(), tmp_path / "x.onnx", profile=ShapeProfile.static(), opset=17)
    with pytest.raises(ValueError, match="unknown component"):
        export_onnx("decoder", WProj(), tmp_path / "x.onnx", profile=ShapeProfile.static())
    with pytest.raises(InvalidInput, match="not a positive multiple of 8"):
        ShapeProfile.static(500, 512)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_verification_refuses_nan_and_inf_and_large_differences():
    from export.verify import VerificationFailed, VerifyReport, compare

    ref = {"wplus_tokens": torch.ones(1, 4, 768)}
    bad = ref["wplus_tokens"].clone()
    bad[0, 0, 0] = float("nan")
    bad[0, 1, 0] = float("inf")
    checks = compare("identity_proj", ref, {"wplus_tokens": bad})
    assert checks[0].nonfinite == 2
    assert not checks[0].ok
    report = VerifyReport("identity_proj", "fp32", checks, seed=0)
    with pytest.raises(VerificationFailed, match=r"2 NaN/Inf — FAILED"):
        report.raise_for_failure()
    off = compare("identity_proj", ref, {"wplus_tokens": ref["wplus_tokens"] + 2e-5})
    assert not off[0].ok  # WProj's fp32 limit is 1e-5
    assert compare("identity_proj", ref, {"wplus_tokens": ref["wplus_tokens"] + 5e-6})[0].ok
    with pytest.raises(VerificationFailed, match="has shape"):
        compare("identity_proj", ref, {"wplus_tokens": torch.ones(1, 4, 767)})
