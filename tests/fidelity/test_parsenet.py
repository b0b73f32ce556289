"""ParseNet against the official PSFRGAN ParseNet (REFERENCE.md §1.3, fixtures parsenet_*).

Rule-wbn-1 weights are written in the official `parse_multi_iter_90000.pth` layout (a plain state dict),
loaded through `load_parsenet` (safe loader + strict layout) and run on the rule image. ≈15–20 s on 2 cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.errors import ModelCorrupt
from engine.networks.parsenet import ParseNet, load_parsenet, parsenet_layout
from engine.testing.wbn import rule_input, rule_state_dict

TOL = 2e-3  # REFERENCE.md §10.3


@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "parsenet_manifest.json").read_text())["keys"]


@pytest.fixture(scope="module")
def parser_file(manifest, tmp_path_factory):
    sd = rule_state_dict({e["key"]: e["shape"] for e in manifest})
    path = tmp_path_factory.mktemp("parsenet") / "parse_multi_iter_90000.pth"
    torch.save(sd, path)
    return path


def test_module_layout_is_the_checkpoint_layout(manifest):
    layout = parsenet_layout()
    assert list(layout) == [e["key"] for e in manifest]
    assert all(layout[e["key"]] == tuple(e["shape"]) for e in manifest)
    n = sum(int(np.prod(s)) for k, s in layout.items() if not k.endswith("num_batches_tracked"))
    assert n == 21_303_254 + sum(int(np.prod(s)) for k, s in layout.items() if "running_" in k)


def test_logits_match_official(parser_file, fixtures_dir):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    net = load_parsenet(parser_file)
    assert not net.training
    x = torch.from_numpy(rule_input("input:parsenet_image", (1, 3, 512, 512), "tanh")).float()
    with torch.no_grad():
        logits = net.logits(x)
    assert logits.shape == (1, 19, 512, 512)
    expected = np.load(fixtures_dir / "parsenet_logits_sub16_expected.npy")
    ours = logits[..., ::16, ::16].numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= TOL


def test_wrong_file_is_refused_with_the_first_bad_key(tmp_path):
    bad = tmp_path / "parse.pth"
    torch.save({"encoder.0.conv2d.weight": torch.zeros(3, 3, 3, 3)}, bad)
    with pytest.raises(ModelCorrupt, match=r"ParseNet.*encoder\.0\.conv2d\.weight"):
        load_parsenet(bad)


def test_forward_returns_mask_and_image_heads():
    net = ParseNet(size=64, min_feat_size=16, base_ch=8, res_depth=1, ch_range=(8, 16)).eval()
    with torch.no_grad():
        mask, img = net(torch.zeros(1, 3, 64, 64))
    assert mask.shape == (1, 19, 64, 64)
    assert img.shape == (1, 3, 64, 64)
