"""e4e, the face parser and the StyleGAN2 preview run on the selected backend from their exports.

The face chain and the preview are built from a config naming the backend, as the CLI and the
session build them; their results are compared with the same small real networks on torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.backends.torch_backend import module_runner
from engine.config import EngineConfig
from engine.faces.chain import FaceChain
from engine.faces.parse import FaceParser
from engine.models.service import ModelService
from engine.testing.stylegan2 import rule_wplus

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
NO_TRT = importlib.util.find_spec("tensorrt") is None


@pytest.fixture(scope="module")
def face_models(models, profile, tmp_path_factory) -> Path:
    """A models folder whose `onnx/` holds the face encoder, parser and preview exports (no parser file).

    The exported backends never read the e4e checkpoint (they run without it:
    test_backend_face_chain_exports.py); a placeholder stands in for the 1 GB file, which torch refuses.
    """
    from export.to_onnx import export_onnx

    root = tmp_path_factory.mktemp("face_models")
    (root / "e4e_ffhq_encode.pt").write_bytes(b"placeholder: the ONNX Runtime chain must not open this file")
    for component in ("face_encoder", "face_parser", "stylegan_preview"):
        export_onnx(component, models.modules[component], root / "onnx" / f"{component}.onnx", profile=profile)
    return root


def _config(root: Path, backend: str) -> EngineConfig:
    return EngineConfig(models_dir=root, device="cpu", dtype="float32", backend=backend)


def _torch_chain(models) -> FaceChain:
    return FaceChain(lambda: module_runner("face_encoder", models.modules["face_encoder"]),
                     lambda: FaceParser(module_runner("face_parser", models.modules["face_parser"])))


def test_face_chain_runs_e4e_and_the_parser_on_onnxruntime(face_models, models, astronaut):
    chain = FaceChain.from_service(ModelService(_config(face_models, "onnxruntime")))
    assert chain.backend_choice.backend == "onnxruntime"
    assert not chain.backend_choice.fell_back
    ident = chain.encode_identity(astronaut, aligned=True)
    want = _torch_chain(models).encode_identity(astronaut, aligned=True)
    # the parser export whitened the face though no parser checkpoint is in the folder
    assert ident.info["whitened"] is True
    assert ident.info["whitened_fraction"] == want.info["whitened_fraction"]
    assert 0.05 < ident.info["whitened_fraction"] < 0.95
    assert np.abs(want.wplus).max() > 1e-1
    np.testing.assert_allclose(ident.wplus, want.wplus, rtol=0, atol=1e-4)
    assert not ident.info["warnings"]


@pytest.mark.skipif(not NO_TRT, reason="tensorrt is installed: the fallback cannot be shown")
def test_face_chain_fallback_is_explained_once(face_models, astronaut):
    chain = FaceChain.from_service(ModelService(_config(face_models, "tensorrt")))
    assert chain.backend_choice.backend == "onnxruntime"
    first = chain.encode_identity(astronaut, aligned=True).info["warnings"]
    second = chain.encode_identity(astronaut, aligned=True).info["warnings"]
    assert [w for w in first if w.startswith("Running on onnxruntime (cpu) instead of tensorrt:")]
    assert any("TensorRT is not installed" in w for w in first)
    assert second == []


def test_face_chain_on_torch_ignores_the_exports(face_models):
    # torch asked for: the chain needs the real checkpoint, and says so when it is not one
    from engine.errors import EngineError

    chain = FaceChain.from_service(ModelService(_config(face_models, "torch")))
    assert chain.backend_choice.backend == "torch"
    with pytest.raises(EngineError):
        chain.encode_input(np.zeros((1, 3, 256, 256), np.float32))


def test_preview_renders_its_export_on_onnxruntime(face_models, models):
    from engine.pipeline.preview_backend import RunnerPreview, open_preview

    service = ModelService(_config(face_models, "onnxruntime"))
    preview, choice = open_preview(service.config, lambda: service.load("stylegan_preview"))
    assert choice.backend == "onnxruntime"
    assert isinstance(preview, RunnerPreview)
    assert preview.resolution == 256
    w = rule_wplus("input:wplus#backend_preview")
    got, want = preview.render(w, 256), models.preview.render(w, 256)
    assert got.shape == (256, 256, 3)
    assert got.dtype == np.uint8
    assert want.std() > 10
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1  # float outputs within 1e-4: only truncation at a level boundary can differ
    assert (diff > 0).mean() < 1e-3


def test_preview_sizes_without_export_run_on_torch(face_models, models):
    from engine.backends.ort_backend import OrtRunners
    from engine.pipeline.preview_backend import RunnerPreview

    runner = OrtRunners(face_models / "onnx").get("stylegan_preview")
    loads = []
    preview = RunnerPreview(runner, lambda: loads.append(1) or models.preview)
    w = rule_wplus("input:wplus#backend_preview_sizes")
    preview.render(w, 256)
    assert loads == []  # the exported level needs no torch generator
    assert np.array_equal(preview.render(w, 128), models.preview.render(w, 128))
    assert np.array_equal(preview.render(w, 256, full=True), models.preview.render(w, 256, full=True))
    assert loads == [1]


def test_preview_export_without_resolution_is_refused(face_models):
    from engine.backends.ort_backend import OrtRunners
    from engine.errors import InvalidInput
    from engine.pipeline.preview_backend import RunnerPreview

    runner = OrtRunners(face_models / "onnx").get("stylegan_preview")
    stripped = replace(runner, info=replace(runner.info, profile=replace(runner.info.profile, dims=())))
    with pytest.raises(InvalidInput, match="does not record its resolution"):
        RunnerPreview(stripped, lambda: None)


def test_cli_preview_on_onnxruntime_and_fallback_told(face_models, models, tmp_path, capsys):
    from PIL import Image

    from engine.cli import main

    w = rule_wplus("input:wplus#backend_cli")
    np.save(tmp_path / "w.npy", w)
    out = tmp_path / "face.png"
    code = main(["preview", str(tmp_path / "w.npy"), "-o", str(out), "--backend", "onnxruntime",
                 "--models-dir", str(face_models), "--device", "cpu"])
    assert code == 0
    got = np.asarray(Image.open(out).convert("RGB"))
    assert np.abs(got.astype(int) - models.preview.render(w, 256).astype(int)).max() <= 1
    err = capsys.readouterr().err
    assert "instead of" not in err
    if NO_TRT:
        code = main(["preview", str(tmp_path / "w.npy"), "-o", str(out), "--backend", "tensorrt",
                     "--models-dir", str(face_models), "--device", "cpu"])
        assert code == 0
        err = capsys.readouterr().err
        assert err.count("Running on onnxruntime (cpu) instead of tensorrt") == 1
