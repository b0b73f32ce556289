"""WProj against the official WProjModel (REFERENCE.md §3.1, §3.3; fixtures wproj*_expected.npy).

The rule-wbn-1 adapter is written in the official `wplus_adapter.bin` layout and loaded through
`load_adapter_checkpoint`; WProj is also checked against an independent float64 numpy formula on a
W+ the fixtures do not contain.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.networks.wplus import WProj, load_adapter_checkpoint
from engine.testing.official_files import write_official_adapter
from engine.testing.wbn import rule_input

TOL = 1e-5
SPLITS = ((0, 4), (4, 8), (8, 12), (12, 18))


@pytest.fixture(scope="module")
def adapter_file(fixtures_dir, tmp_path_factory):
    m = json.loads((fixtures_dir / "wplus_adapter_manifest.json").read_text())
    w_proj = {e["key"]: e["shape"] for e in m["w_proj"]}
    wplus_adapter = {e["key"]: e["shape"] for e in m["wplus_adapter"]}
    return write_official_adapter(tmp_path_factory.mktemp("adapter") / "wplus_adapter.bin", w_proj, wplus_adapter)


@pytest.fixture(scope="module")
def ckpt(adapter_file):
    return load_adapter_checkpoint(adapter_file)


@pytest.fixture(scope="module")
def wproj(ckpt):
    model = WProj()
    model.load_state_dict(ckpt.w_proj, strict=True)
    return model.eval()


def _run(model, w: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(w, dtype=np.float32))).numpy()


def _wproj_f64(state, w: np.ndarray) -> np.ndarray:
    """§3.1 written out in float64: token i = W_i · flatten(W+[a:b]) (row-major), then LayerNorm(eps 1e-5)."""
    w = np.asarray(w, dtype=np.float64)
    tokens = []
    for i, (a, b) in enumerate(SPLITS):
        weight = state[f"proj_{i}.weight"].double().numpy()
        flat = w[:, a:b, :].reshape(w.shape[0], -1)
        tokens.append(flat @ weight.T)
    t = np.stack(tokens, axis=1)
    mu = t.mean(-1, keepdims=True)
    var = ((t - mu) ** 2).mean(-1, keepdims=True)
    return (t - mu) / np.sqrt(var + 1e-5) * state["norm.weight"].double().numpy() + state["norm.bias"].double().numpy()


def test_layout_and_manifest(ckpt, fixtures_dir):
    m = json.loads((fixtures_dir / "wplus_adapter_manifest.json").read_text())
    assert {k: tuple(v.shape) for k, v in WProj().state_dict().items()} == {e["key"]: tuple(e["shape"]) for e in m["w_proj"]}
    assert sum(v.numel() for v in ckpt.w_proj.values()) == m["w_proj_parameters"]
    assert sum(v.numel() for v in ckpt.wplus_adapter.values()) == m["wplus_adapter_parameters"]
    assert ckpt.processor_indices == tuple(m["indices_with_weights"])


def test_matches_official_wproj(wproj, fixtures_dir):
    w = rule_input("input:wplus", (1, 18, 512), "half")
    out = _run(wproj, w)
    expected = np.load(fixtures_dir / "wproj_expected.npy")
    assert out.shape == (1, 4, 768)
    err = np.abs(out - expected).max()
    assert err <= TOL, f"max |Δ| {err:.3g}"


def test_uncond_tokens_are_the_layernorm_bias(wproj, ckpt, fixtures_dir):
    out = _run(wproj, np.zeros((1, 18, 512)))
    expected = np.load(fixtures_dir / "wproj_uncond_expected.npy")
    assert np.abs(out - expected).max() <= TOL
    np.testing.assert_array_equal(out[0], np.broadcast_to(ckpt.w_proj["norm.bias"].numpy(), (4, 768)))


def test_matches_float64_formula_on_other_inputs(wproj, ckpt):
    rng = np.random.default_rng(2311)
    # a batch of codes the fixtures never saw: e4e-like statistics, plus a large-magnitude one
    w = np.concatenate([0.14 + 0.47 * rng.standard_normal((2, 18, 512)), 3.0 * rng.standard_normal((1, 18, 512))])
    out = _run(wproj, w)
    ref = _wproj_f64(ckpt.w_proj, w.astype(np.float32))
    err = np.abs(out - ref).max()
    assert err <= TOL, f"max |Δ| {err:.3g}"


@pytest.mark.parametrize(("row", "token"), [(0, 0), (3, 0), (4, 1), (7, 1), (8, 2), (11, 2), (12, 3), (17, 3)])
def test_each_token_sees_only_its_layer_slice(wproj, row, token):
    w = rule_input("input:wplus", (1, 18, 512), "half")
    base = _run(wproj, w)
    moved = w.copy()
    moved[0, row] += 0.5 * np.random.default_rng(row).standard_normal(512)
    changed = np.abs(_run(wproj, moved) - base).max(axis=-1)[0]
    assert changed[token] > 1e-3
    others = [i for i in range(4) if i != token]
    assert changed[others].max() == 0.0


def test_flatten_is_row_major_over_layer_then_channel(wproj, ckpt):
    # a single non-zero entry W+[5, 7] must be multiplied by column (5-4)·512 + 7 of proj_1
    w = np.zeros((1, 18, 512))
    w[0, 5, 7] = 1.0
    col = ckpt.w_proj["proj_1.weight"][:, 512 + 7].double().numpy()
    mu, sd = col.mean(), np.sqrt(col.var() + 1e-5)
    expected = (col - mu) / sd * ckpt.w_proj["norm.weight"].double().numpy() + ckpt.w_proj["norm.bias"].double().numpy()
    np.testing.assert_allclose(_run(wproj, w)[0, 1], expected, atol=TOL, rtol=0)
