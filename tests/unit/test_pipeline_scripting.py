"""docs/SCRIPTING.md: its code blocks run as written against a models folder (tiny SD1.5 + adapter)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.testing.tiny import cached_tiny_models, tiny_wplus

DOC = Path(__file__).resolve().parents[2] / "docs" / "SCRIPTING.md"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def models_cwd(tmp_path_factory, tmp_path):
    tiny = cached_tiny_models(tmp_path_factory.getbasetemp())
    (tmp_path / "models").symlink_to(tiny, target_is_directory=True)
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_doc_has_the_three_examples():
    blocks = _blocks()
    assert len(blocks) == 3
    assert "load_e4e" in blocks[0]
    assert "load_wplus_adapter" in blocks[1]
    assert "read_request" in blocks[2]


def test_generation_and_rerender_blocks_run(models_cwd):
    _, gen, rerender = _blocks()
    # the tiny models are SD1.5-shaped; only the image size and step count are made small
    gen_small = gen.replace("steps=30", "steps=3").replace("width=512, height=512", "width=64, height=64")
    assert gen_small != gen
    ns: dict = {"wplus": tiny_wplus(0)}  # what block 1 produces with a real e4e
    exec(compile(gen_small, "SCRIPTING.md#2", "exec"), ns)
    assert ns["tokens"].shape == (1, 4, 768)
    assert torch.allclose(ns["uncond"][0, 0], ns["wproj"].norm.bias)  # WProj(0) = LayerNorm bias
    assert (models_cwd / "spacesuit.png").is_file()
    assert ns["moved"].timings["steps_cached"] == 1  # int(0.2·3) = 0 → step 0 is reused
    exec(compile(rerender, "SCRIPTING.md#3", "exec"), ns)
    assert np.array_equal(ns["again"].images[0], ns["result"].images[0])


@pytest.mark.slow
def test_e4e_block_runs_with_a_full_size_encoder(models_cwd, tmp_path):
    from safetensors.torch import save_file

    from engine.networks.e4e import E4EEncoder

    with torch.device("meta"):
        enc = E4EEncoder()
    enc = enc.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.ndim > 1 else 0.01))
        for name, b in enc.named_buffers():
            b.copy_(torch.ones_like(b) if name.endswith("running_var") else torch.zeros_like(b))
    state = {("latent_avg" if k == "latent_avg" else f"encoder.{k}"): v.contiguous()
             for k, v in enc.state_dict().items()}
    real_models = tmp_path / "real-models"
    real_models.mkdir()
    save_file(state, str(real_models / "e4e_ffhq_encode.safetensors"), metadata={"wplus_layout": "e4e"})
    (models_cwd / "models").unlink()
    (models_cwd / "models").symlink_to(real_models, target_is_directory=True)
    ns: dict = {}
    exec(compile(_blocks()[0], "SCRIPTING.md#1", "exec"), ns)
    assert ns["wplus"].shape == (1, 18, 512)
    assert np.isfinite(ns["wplus"]).all()
