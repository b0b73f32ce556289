"""PSFRGAN generator against the official `PSFRGenerator` (PSFRGAN.md §2–3, fixtures psfr_A_*).

Rule-wbn-1 weights are written in the official `psfrgan_epoch15_net_G.pth` layout (a plain state dict),
imported into a models folder (converted once to safetensors, as the app does), loaded through the
product loader and run on the fixture face and parse map. ≈6 s per forward on 2 cores.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import EngineConfig
from engine.errors import ModelCorrupt
from engine.faces.restore import labels_onehot, open_restorer, tensor2pil
from engine.models.service import ModelService
from engine.networks.psfrgan import load_psfrgan, psfrgan_layout
from engine.testing.official_files import write_official_psfrgan

TOL = 1e-4  # PSFRGAN.md §3


@pytest.fixture(scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("psfr_models")
    write_official_psfrgan(root / "psfrgan_epoch15_net_G.pth")
    return root


@pytest.fixture(scope="module")
def restorer(models_dir, threads):
    return open_restorer(ModelService(EngineConfig(models_dir=models_dir, device="cpu", backend="torch")))


@pytest.fixture(scope="module")
def face_a(fixtures_dir):
    return np.asarray(Image.open(fixtures_dir / "align_caseA_expected.png").convert("RGB"))


@pytest.fixture(scope="module")
def labels_a(fixtures_dir):
    return np.load(fixtures_dir / "psfr_A_input_parse.npy")


@pytest.fixture(scope="module")
def result_a(restorer, face_a, labels_a):
    return restorer.restore(face_a, labels_onehot(labels_a))


def test_layout_is_the_official_file(fixtures_dir):
    layout = psfrgan_layout()
    meta = json.loads((fixtures_dir / "psfr_A_meta.json").read_text())
    assert len(layout) == meta["keys"] == 111
    assert sum(int(np.prod(s)) for s in layout.values()) == meta["params"] == 45_956_995
    assert layout["const_input"] == (1, 1024, 16, 16)
    assert layout["img_out.weight"] == (3, 32, 3, 3)
    # PSFRGAN.md §2: the stage convs and their SPADE blocks, 1024 → 32 channels
    for i, (cin, cout) in enumerate(((1024, 512), (512, 256), (256, 128), (128, 64), (64, 32))):
        assert layout[f"body.{i}.1.weight"] == (cout, cin, 3, 3)
        assert layout[f"body.{i}.2.norm_1.gamma_conv.weight"] == (cout, 64, 3, 3)
        assert layout[f"body.{i}.2.norm_0.conv1.0.weight"] == (64, 22, 3, 3)
    block = re.compile(r"^(head\.1|body\.\d\.2)\.(conv_[01]|norm_[01]\.(conv1\.0|gamma_conv|beta_conv))\.(weight|bias)$")
    other = {"const_input", "img_out.weight", "img_out.bias", "head.0.weight", "head.0.bias",
             *(f"body.{i}.1.{w}" for i in range(5) for w in ("weight", "bias"))}
    assert all(block.match(k) or k in other for k in layout)


def test_import_converts_to_safetensors(restorer, models_dir):
    assert (models_dir / "psfrgan_epoch15_net_G.safetensors").is_file()
    assert restorer.backend == "torch"


def test_crops_match_official(result_a, fixtures_dir):
    out = result_a.raw
    assert out.shape == (1, 3, 512, 512)
    assert out.dtype == np.float32
    center = np.load(fixtures_dir / "psfr_A_center128_expected.npy")
    corner = np.load(fixtures_dir / "psfr_A_corner32_expected.npy")
    avg = np.load(fixtures_dir / "psfr_A_avg128_expected.npy")
    assert np.abs(out[:, :, 192:320, 192:320] - center).max() <= TOL
    assert np.abs(out[:, :, :32, :32] - corner).max() <= TOL
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(out), 4).numpy()
    assert np.abs(pooled - avg).max() <= TOL
    meta = json.loads((fixtures_dir / "psfr_A_meta.json").read_text())
    assert abs(float(out.mean()) - meta["out_mean"]) < 1e-4
    assert abs(float(out.std()) - meta["out_std"]) < 1e-4


def test_png_matches_official_within_one_grey_level(result_a, fixtures_dir):
    expected = np.asarray(Image.open(fixtures_dir / "psfr_A_expected.png").convert("RGB")).astype(int)
    assert result_a.image.shape == (512, 512, 3)
    assert result_a.image.dtype == np.uint8
    assert np.abs(result_a.image.astype(int) - expected).max() <= 1


def test_tensor2pil_truncates_and_clips():
    x = np.array([-2.0, -1.0, -0.999, 0.0, 0.999, 1.0, 3.0], np.float32)
    img = np.broadcast_to(x, (1, 3, 1, 7))
    got = tensor2pil(img)[0, :, 0].tolist()
    # (x + 1)/2·255: 0, 0, 0.1275 → 0, 127.5 → 127 (not 128), 254.87 → 254 (not 255), 255, 255
    assert got == [0, 0, 0, 127, 254, 255, 255]


def _aligned_astronaut(astronaut, detector):
    from engine.faces.align import align_face

    face = detector.detect(astronaut)[0]
    return align_face(astronaut, face.landmarks)[0]


def test_other_face_and_parse_map_are_finite_deterministic_and_matter(
    restorer, result_a, face_a, labels_a, astronaut, detector
):
    aligned = _aligned_astronaut(astronaut, detector)
    # a different, blocky parse map: face classes in the middle, background around
    yy, xx = np.mgrid[:512, :512]
    labels_b = np.where((yy - 256) ** 2 + (xx - 256) ** 2 < 180**2, 1, 0).astype(np.uint8)
    labels_b[200:230, 170:230] = 4
    labels_b[200:230, 282:342] = 5
    labels_b[330:370, 200:312] = 10
    first = restorer.restore(aligned, labels_onehot(labels_b))
    again = restorer.restore(aligned, labels_onehot(labels_b))
    assert first.raw.shape == (1, 3, 512, 512)
    assert np.isfinite(first.raw).all()
    assert np.array_equal(first.raw, again.raw)
    assert np.array_equal(first.image, tensor2pil(first.raw))
    # both inputs reach the output (PSFRGAN.md §3: changes of order 1–3)
    other_map = restorer.restore(face_a, labels_onehot(labels_b))
    assert np.abs(other_map.raw - result_a.raw).max() > 0.5
    assert np.abs(first.raw - other_map.raw).max() > 0.5


def test_ties_in_the_logits_set_several_ones():
    from engine.faces.restore import parse_onehot

    logits = torch.zeros(1, 19, 2, 2)
    logits[0, 3, 0, 0] = 5.0
    onehot = parse_onehot(logits)
    assert onehot[0, :, 0, 0].sum() == 1
    assert onehot[0, 3, 0, 0] == 1
    assert onehot[0, :, 1, 1].sum() == 19  # an exact tie, as in the official comparison with the max


def test_wrong_file_is_refused_with_the_first_bad_key(tmp_path):
    bad = tmp_path / "psfrgan_epoch15_net_G.pth"
    # a spectral-normed copy would store weight_orig/_u/_v instead of weight
    torch.save({"const_input": torch.zeros(1, 1024, 16, 16), "img_out.weight_orig": torch.zeros(3, 32, 3, 3)}, bad)
    with pytest.raises(ModelCorrupt, match=r"PSFRGAN.*head\.0\.weight. is missing"):
        load_psfrgan(bad)


def test_wrong_parse_map_is_refused(restorer, face_a):
    from engine.errors import InvalidInput

    with pytest.raises(InvalidInput, match="classes 0–18"):
        labels_onehot(np.full((512, 512), 19, np.uint8))
    with pytest.raises(InvalidInput, match="1×19×512×512"):
        restorer.restore(face_a, labels_onehot(np.zeros((256, 256), np.uint8)))

