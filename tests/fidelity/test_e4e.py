"""e4e encoder against the official Encoder4Editing (REFERENCE.md §2, fixture e4e_expected.npy).

Rule-wbn-1 weights (decoder wbn-1d) are written in the official `e4e_ffhq_encode.pt` layout, loaded
through `load_e4e` and run on the rule image. The full-size file (1.2 GB) and the model are built once
per module; the whole file takes ~30–40 s on 2 cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.models.convert import convert_to_safetensors
from engine.networks.e4e import E4EEncoder, e4e_layout, load_e4e, load_e4e_checkpoint
from engine.testing.official_files import write_official_e4e
from engine.testing.wbn import rule_input

TOL = 1e-4  # REFERENCE.md §10.3 acceptance for an independent float32 re-implementation


@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "e4e_manifest.json").read_text())


@pytest.fixture(scope="module")
def e4e_file(manifest, tmp_path_factory):
    shapes = {e["key"]: tuple(e["shape"]) for e in manifest["keys"]}
    return write_official_e4e(tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt", shapes)


@pytest.fixture(scope="module")
def model(e4e_file):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_e4e(e4e_file)


@pytest.fixture(scope="module")
def outputs(model):
    """One batch: [another image, the fixture's rule image] — the fixture row must not depend on its neighbour."""
    x = rule_input("input:e4e_image", (1, 3, 256, 256), "tanh")
    other = rule_input("test:e4e_other_image", (1, 3, 256, 256), "tanh")
    batch = torch.from_numpy(np.concatenate([other, x]).astype(np.float32))
    with torch.no_grad():
        return model(batch).numpy()


def test_module_layout_is_the_checkpoint_layout(manifest):
    expected = {e["key"][len("encoder."):]: tuple(e["shape"]) for e in manifest["keys"] if e["key"].startswith("encoder.")}
    assert e4e_layout() == expected
    with torch.device("meta"):
        sd = E4EEncoder().state_dict()
    assert set(sd) == {*expected, "latent_avg"}
    n_params = sum(v.numel() for k, v in sd.items() if not k.split(".")[-1].startswith(("running_", "num_batches")))
    assert n_params - 18 * 512 == manifest["encoder_parameters"]


def test_matches_official_encoder(outputs, fixtures_dir):
    expected = np.load(fixtures_dir / "e4e_expected.npy")
    assert outputs.shape == (2, 18, 512)
    assert outputs.dtype == np.float32
    err = np.abs(outputs[1:] - expected).max()
    assert err <= TOL, f"max |Δ| {err:.3g} > {TOL}"


def test_other_input_gives_another_code_with_the_e4e_structure(outputs, model):
    other = outputs[0]
    assert np.abs(other - outputs[1]).max() > 0.05
    # e4e predicts one w0 plus per-layer offsets: row 0 of the codes is w0 itself and every
    # offset is smaller than w0 (observed std 0.24 vs 0.17 for the fixture)
    codes = other - model.latent_avg.numpy()
    offsets = codes[1:] - codes[0]
    assert offsets.std() < codes[0].std()
    assert np.isfinite(other).all()


def test_model_is_in_eval_mode_with_latent_avg(model, e4e_file):
    assert not model.training
    assert all(not m.training for m in model.modules())
    ckpt = load_e4e_checkpoint(e4e_file)
    assert torch.equal(model.latent_avg, ckpt.latent_avg)
    assert ckpt.opts["encoder_type"] == "Encoder4Editing"
    assert len(ckpt.decoder_state) == 171


def test_safetensors_conversion_loads_the_same_encoder(e4e_file, model, tmp_path):
    st = convert_to_safetensors(e4e_file, tmp_path / "e4e_ffhq_encode.safetensors")
    converted = load_e4e(st)
    a, b = model.state_dict(), converted.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpt = load_e4e_checkpoint(st)
    assert len(ckpt.decoder_state) == 171
    assert ckpt.opts["stylegan_size"] == 1024
