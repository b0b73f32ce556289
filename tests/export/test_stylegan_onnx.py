"""StyleGAN2 preview (reduced 256² path) → ONNX (dynamo exporter) → ONNX Runtime CPU, within 1e-4 of torch.

A reduced-channel generator (official widths / 16) runs the same code path as the full one: same
18 W+ rows, same stages, same ops (modulation, transposed conv, FIR blur, noise, skip upsampling).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from engine.networks.stylegan2.modules import GeneratorShape
from engine.pipeline.face_preview import StyleGANPreview
from engine.testing.stylegan2 import rule_decoder_state, rule_wplus
from export.stylegan_preview import export_preview_onnx

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def preview():
    # the CPU default (channels_last) on purpose: the exporter must drop the layout hints
    return StyleGANPreview.from_state_dict(rule_decoder_state(GeneratorShape.reduced(16)))


@pytest.fixture(scope="module")
def onnx_path(preview, tmp_path_factory):
    path = tmp_path_factory.mktemp("sg_onnx") / "stylegan_preview.onnx"
    return export_preview_onnx(preview.module, path)


def test_onnx_graph_io(onnx_path):
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 18
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "wplus"
    assert out.name == "image"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str)  # dynamic batch
    assert dims[1:] == [18, 512]
    assert not list(onnx_path.parent.glob("*.data"))  # self-contained


def test_onnxruntime_matches_torch(preview, onnx_path):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        w = np.concatenate([rule_wplus(f"input:wplus#onnx{i}") for i in range(batch)])
        with torch.inference_mode():
            want = preview.module(torch.from_numpy(w)).numpy()
        (got,) = session.run(["image"], {"wplus": w})
        assert got.shape == (batch, 3, 256, 256)
        assert np.isfinite(got).all()
        assert np.abs(want).max() > 1e-1  # not a comparison of two near-zero images
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_export_keeps_the_generator_layout(preview, onnx_path):
    assert preview.generator.memory_format == torch.channels_last  # restored after the export


@pytest.mark.slow
def test_full_size_preview_path_onnx(tmp_path):
    """The real architecture (113 MB graph, ~15–25 s on 2 cores): ORT within 1e-4 of torch."""
    full = StyleGANPreview.from_state_dict(rule_decoder_state())
    path = export_preview_onnx(full.module, tmp_path / "stylegan_preview.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    w = rule_wplus("input:wplus#onnx_full")
    (got,) = session.run(["image"], {"wplus": w})
    with torch.inference_mode():
        want = full.module(torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
