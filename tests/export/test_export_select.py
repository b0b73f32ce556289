"""Backend probing, choice and explicit fallback, and the two-ONNX-Runtimes detection."""

from __future__ import annotations

import importlib.util

import pytest

from engine.backends.packages import onnxruntime_conflict
from engine.backends.select import BackendReport, BackendStatus, choose, probe

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def exported(tmp_path):
    """choose() only looks whether a UNet export is there; opening it is the backends' job."""
    d = tmp_path / "onnx"
    d.mkdir()
    (d / "unet.onnx").write_bytes(b"placeholder")
    return d


def test_conflict_detected_from_a_distribution_list():
    msg = onnxruntime_conflict(["numpy", "onnxruntime", "onnxruntime-gpu", "torch"])
    assert msg is not None
    assert "Both onnxruntime and onnxruntime-gpu are installed" in msg
    assert "pip uninstall onnxruntime" in msg
    assert "pip install --force-reinstall onnxruntime-gpu" in msg


def test_conflict_names_are_normalised():
    assert onnxruntime_conflict(["ONNXRuntime", "onnxruntime_gpu"]) is not None
    assert "onnxruntime-directml" in onnxruntime_conflict(["onnxruntime-directml", "onnxruntime"])


@pytest.mark.parametrize("dists", [[], ["onnxruntime"], ["onnxruntime-gpu", "onnx"], ["onnxruntime-extensions"]])
def test_no_conflict(dists):
    assert onnxruntime_conflict(dists) is None


def test_this_environment_has_no_conflict():
    assert onnxruntime_conflict() is None


def test_probe_reports_the_conflict_as_unavailable():
    report = probe(["torch", "onnxruntime", "onnxruntime-gpu"], check_torch_cuda=False)
    ort = report.status("onnxruntime")
    assert not ort.available
    assert "Uninstall onnxruntime" in ort.reason
    assert report.warnings
    assert any(line.startswith("warning: Both onnxruntime") for line in report.lines())


def test_probe_here():
    report = probe()
    assert report.status("torch").available
    assert report.status("onnxruntime").available
    assert "CPUExecutionProvider" in report.ort_providers
    lines = report.lines()
    assert len(lines) == 3
    assert lines[0].startswith("torch ")
    if not HAS_TRT:
        trt = report.status("tensorrt")
        assert not trt.available
        assert "TensorRT is not installed" in trt.reason


def _report(*, cuda: bool, trt: bool, ort_cuda: bool, ort: bool = True) -> BackendReport:
    """A probe result as a GPU workstation would give it (data only; nothing is faked in the engine)."""
    return BackendReport(
        (
            BackendStatus("torch", True, "CUDA" if cuda else "CPU", ("cuda", "cpu") if cuda else ("cpu",)),
            BackendStatus("onnxruntime", ort, "ok" if ort else "ONNX Runtime is not installed.",
                          ("cuda", "cpu") if ort_cuda else ("cpu",)),
            BackendStatus("tensorrt", trt, "ready" if trt else "TensorRT is not installed (pip install tensorrt).",
                          ("cuda",) if trt else ()),
        ),
        cuda=cuda,
        gpu_name="NVIDIA GeForce RTX 4090" if cuda else "",
    )


def test_auto_prefers_tensorrt_then_onnxruntime_then_torch(exported, tmp_path):
    tmp_path = tmp_path / "empty"
    gpu = _report(cuda=True, trt=True, ort_cuda=True)
    assert choose("auto", gpu, onnx_dir=exported).backend == "tensorrt"
    assert choose("auto", gpu, onnx_dir=tmp_path).backend == "torch"  # no exports: no surprise build
    cpu = _report(cuda=False, trt=False, ort_cuda=False)
    c = choose("auto", cpu, onnx_dir=exported)
    assert (c.backend, c.device, c.fell_back) == ("onnxruntime", "cpu", False)
    assert choose("auto", cpu).backend == "torch"


def test_tensorrt_falls_back_with_reasons(exported):
    c = choose("tensorrt", _report(cuda=True, trt=False, ort_cuda=True), onnx_dir=exported)
    assert (c.backend, c.device) == ("onnxruntime", "cuda")
    assert c.fell_back
    assert "tensorrt is unavailable: TensorRT is not installed" in c.message
    assert c.message.startswith("Running on onnxruntime (cuda) instead of tensorrt:")


def test_cpu_only_onnxruntime_on_a_gpu_falls_back_to_torch(exported):
    c = choose("onnxruntime", _report(cuda=True, trt=False, ort_cuda=False), onnx_dir=exported)
    assert c.backend == "torch"
    assert "install onnxruntime-gpu (and uninstall onnxruntime)" in c.message


def test_missing_exports_are_the_reason(tmp_path):
    c = choose("onnxruntime", _report(cuda=False, trt=False, ort_cuda=False), onnx_dir=tmp_path)
    assert c.backend == "torch"
    assert f"there is no ONNX export of unet in {tmp_path}" in c.message
    assert "python -m export onnx" in c.message


def test_the_components_asked_for_decide_whether_exports_exist(exported):
    cpu = _report(cuda=False, trt=False, ort_cuda=False)
    c = choose("onnxruntime", cpu, onnx_dir=exported, components=("face_encoder",))
    assert c.backend == "torch"
    assert f"there is no ONNX export of face_encoder in {exported}" in c.message
    (exported / "face_encoder.onnx").write_bytes(b"placeholder")
    assert choose("onnxruntime", cpu, onnx_dir=exported, components=("face_encoder",)).backend == "onnxruntime"
    c = choose("onnxruntime", cpu, onnx_dir=exported, components=("face_encoder", "face_parser"))
    assert "no ONNX export of face_parser" in c.message


def test_cuda_requested_without_a_gpu(exported):
    c = choose("torch", _report(cuda=False, trt=False, ort_cuda=False), device="cuda")
    assert (c.backend, c.device) == ("torch", "cpu")
    assert "No CUDA GPU is available" in c.message


def test_choice_here_for_tensorrt(exported):
    c = choose("tensorrt", onnx_dir=exported)
    if not HAS_TRT:
        assert c.backend in ("onnxruntime", "torch")
        assert "tensorrt is unavailable" in c.message


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'openvino'"):
        choose("openvino", _report(cuda=False, trt=False, ort_cuda=False))
