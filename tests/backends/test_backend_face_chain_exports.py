"""The face chain runs from its exports without the e4e checkpoint; on torch the missing file is named.

The `face_encoder` export carries the whole encoder — `latent_avg` included — so a folder with only
`onnx/face_encoder.onnx` (and the parser's export) can encode faces on ONNX Runtime. An export whose
recorded source file is at its path is checked against it (a changed file makes it stale, and the chain
falls back to torch, which needs the checkpoint); one whose source is absent cannot be checked and is
used, as the backends treat any export copied to another machine.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from engine.backends.artifacts import WeightSource
from engine.backends.torch_backend import module_runner
from engine.config import EngineConfig
from engine.errors import ModelMissing
from engine.faces.chain import FaceChain
from engine.faces.parse import FaceParser
from engine.models.service import ModelService

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
NO_TRT = importlib.util.find_spec("tensorrt") is None


def _folder(root: Path, models, profile, *, weights=()) -> Path:
    """A models folder without any e4e file: only the face encoder's and the parser's exports."""
    from export.to_onnx import export_onnx

    root.mkdir(parents=True)
    export_onnx("face_encoder", models.modules["face_encoder"], root / "onnx" / "face_encoder.onnx",
                profile=profile, weights=weights)
    export_onnx("face_parser", models.modules["face_parser"], root / "onnx" / "face_parser.onnx", profile=profile)
    return root


def _service(root: Path, backend: str) -> ModelService:
    return ModelService(EngineConfig(models_dir=root, device="cpu", dtype="float32", backend=backend))


@pytest.fixture(scope="module")
def no_e4e(models, profile, tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("no_e4e") / "models", models, profile)


def test_chain_encodes_from_the_export_without_the_e4e_file(no_e4e, models, astronaut):
    assert not list(no_e4e.glob("e4e_ffhq_encode.*"))
    chain = FaceChain.from_service(_service(no_e4e, "onnxruntime"))
    assert chain.backend_choice.backend == "onnxruntime"
    ident = chain.encode_identity(astronaut, aligned=True)
    want = FaceChain(lambda: module_runner("face_encoder", models.modules["face_encoder"]),
                     lambda: FaceParser(module_runner("face_parser", models.modules["face_parser"]))
                     ).encode_identity(astronaut, aligned=True)
    # the export adds latent_avg itself: the W+ equals the torch encoder's codes + latent_avg
    latent_avg = models.modules["face_encoder"].latent_avg.numpy()
    assert np.abs(latent_avg).max() > 1e-2
    np.testing.assert_allclose(ident.wplus, want.wplus, rtol=0, atol=1e-4)
    assert np.abs(ident.wplus - latent_avg).max() > 1e-2  # not latent_avg alone
    assert ident.info["e4e"] == "face_encoder.onnx"  # what encoded it, since there is no checkpoint
    assert not ident.info["warnings"]


def test_on_torch_the_missing_e4e_file_is_named(no_e4e):
    with pytest.raises(ModelMissing, match=r"e4e face encoder is missing \(expected at .*e4e_ffhq_encode\.pt\)") as e:
        FaceChain.from_service(_service(no_e4e, "torch"))
    assert "wplus models" in e.value.hint


@pytest.mark.skipif(not NO_TRT, reason="tensorrt is installed: this folder has no engines to fall back from")
def test_a_fallback_to_torch_names_the_file_and_why(tmp_path, models, profile):
    # the e4e source recorded in the export changed since: the export is stale, torch would need the file
    source = tmp_path / "elsewhere" / "e4e_ffhq_encode.safetensors"
    source.parent.mkdir()
    source.write_bytes(b"the weights the export was made from")
    root = _folder(tmp_path / "models", models, profile, weights=(WeightSource.of_file("e4e", source),))
    source.write_bytes(b"other weights, written later")
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ModelMissing, match=r"e4e face encoder is missing") as e:
        FaceChain.from_service(_service(root, "onnxruntime"))
    assert "instead of onnxruntime" in e.value.hint
    assert "stale" in e.value.hint


def test_an_export_whose_source_file_is_gone_is_used(tmp_path, models, profile, astronaut):
    source = tmp_path / "elsewhere" / "e4e_ffhq_encode.safetensors"
    source.parent.mkdir()
    source.write_bytes(b"the weights the export was made from")
    root = _folder(tmp_path / "models", models, profile, weights=(WeightSource.of_file("e4e", source),))
    source.unlink()  # e.g. the exports were copied to a machine without the 1 GB checkpoint
    chain = FaceChain.from_service(_service(root, "onnxruntime"))
    assert chain.backend_choice.backend == "onnxruntime"
    assert chain.encode_identity(astronaut, aligned=True).wplus.shape == (1, 18, 512)


def test_a_path_given_for_e4e_must_exist_even_with_exports(no_e4e, tmp_path):
    config = EngineConfig(models_dir=no_e4e, device="cpu", dtype="float32", backend="onnxruntime",
                          e4e=str(tmp_path / "typo.pt"))
    with pytest.raises(ModelMissing, match=r"typo\.pt does not exist"):
        FaceChain.from_service(ModelService(config))


def test_preview_sizes_the_export_lacks_name_the_e4e_file(models, profile, tmp_path):
    from engine.pipeline.preview_backend import RunnerPreview, open_preview
    from engine.testing.stylegan2 import rule_wplus
    from export.to_onnx import export_onnx

    root = tmp_path / "models"
    export_onnx("stylegan_preview", models.modules["stylegan_preview"], root / "onnx" / "stylegan_preview.onnx",
                profile=profile)
    service = _service(root, "onnxruntime")
    preview, _choice = open_preview(service.config, lambda: service.load("stylegan_preview"))
    assert isinstance(preview, RunnerPreview)
    w = rule_wplus("input:wplus#preview_no_e4e")
    assert preview.render(w, 256).shape == (256, 256, 3)  # the exported level needs no checkpoint
    with pytest.raises(ModelMissing, match=r"e4e_ffhq_encode\.pt.*covers the 256² preview only"):
        preview.render(w, 128)
