"""`python -m export onnx --components stylegan_preview`: the preview export through the common exporter.

The decoder comes from an e4e file (a decoder-only safetensors with rule weights of a reduced-channel
generator: same 18 W+ rows and ops as the real one). The export records the preview resolution R in
its profile, so the runtimes know the output shape without running the graph.
"""

from __future__ import annotations

import json

import pytest
import torch

from engine.testing.stylegan2 import rule_decoder_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_stylegan_preview_exports_and_verifies(tmp_path, capsys):
    from safetensors.torch import save_file

    from engine.backends.ort_backend import OrtRunners
    from engine.networks.stylegan2.modules import GeneratorShape
    from export.cli import main

    pytest.importorskip("onnxruntime")
    state = {f"decoder.{k}": v.contiguous() for k, v in rule_decoder_state(GeneratorShape.reduced(16)).items()}
    state["latent_avg"] = torch.zeros(18, 512)
    e4e = tmp_path / "e4e_decoder.safetensors"
    save_file(state, str(e4e))
    out = tmp_path / "onnx"
    code = main(["onnx", "--models-dir", str(tmp_path), "--e4e", str(e4e), "--components", "stylegan_preview",
                 "--out", str(out), "--min-side", "64", "--opt-side", "64", "--max-side", "128", "--verify"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "stylegan_preview.image (2, 3, 256, 256) [onnxruntime, fp32]" in text
    assert "— ok" in text
    record = json.loads((out / "stylegan_preview.onnx.json").read_text())
    assert record["profile"]["dims"]["R"] == [256, 256, 256]
    assert [w["role"] for w in record["weights"]] == ["e4e"]
    runner = OrtRunners(out).get("stylegan_preview")
    assert tuple(runner(wplus=torch.zeros(1, 18, 512))["image"].shape) == (1, 3, 256, 256)
