"""PSFRGAN generator: torch → ONNX (dynamo) → ONNX Runtime CPU within 1e-4, and the restorer on that backend.

The default test exports a reduced generator (the real 512² input and output, 4–16 channels); the
full-size one against the official fixtures is opt-in (`slow`, ≈2–4 min and ≈4 GB RAM).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.backends.ort_backend import OrtRunners
from engine.backends.profiles import DimRange, ShapeProfile
from engine.config import EngineConfig
from engine.faces.restore import FaceRestorer, labels_onehot, open_restorer
from engine.models.service import ModelService
from engine.networks.psfrgan import PSFRGenerator
from engine.testing.wbn import fill_module
from export.to_onnx import export_onnx
from export.verify import verify_onnx

PROFILE = ShapeProfile("restorer-test", (("B", DimRange(1, 1, 2)),))


@pytest.fixture(scope="module")
def small_generator():
    net = PSFRGenerator(ch_range=(4, 16), spade_hidden=8)
    fill_module(net, "test:small_psfrgan.")
    return net.eval()


@pytest.fixture(scope="module")
def exported(small_generator, tmp_path_factory):
    out = tmp_path_factory.mktemp("restorer_onnx")
    export_onnx("face_restorer", small_generator, out / "face_restorer.onnx", profile=PROFILE)
    return out


@pytest.fixture(scope="module")
def face_and_map(fixtures_dir):
    face = np.asarray(Image.open(fixtures_dir / "align_caseA_expected.png").convert("RGB"))
    return face, labels_onehot(np.load(fixtures_dir / "psfr_A_input_parse.npy"))


def test_small_generator_matches_torch_within_1e4(small_generator, exported):
    reports = verify_onnx("face_restorer", small_generator, exported / "face_restorer.onnx", seeds=(0, 1))
    for r in reports:
        r.raise_for_failure()
        for o in r.outputs:
            assert o.max_abs <= 1e-4, r.lines()
            assert o.nonfinite == 0
            assert o.ref_max_abs > 0.1


def test_restorer_on_onnxruntime_equals_torch(small_generator, exported, face_and_map):
    face, onehot = face_and_map
    ort = FaceRestorer.from_runner(OrtRunners(exported).get("face_restorer"))
    assert ort.backend == "onnxruntime"
    got = ort.restore(face, onehot)
    want = FaceRestorer.from_module(small_generator).restore(face, onehot)
    assert np.abs(got.raw - want.raw).max() <= 1e-4
    assert np.abs(got.image.astype(int) - want.image.astype(int)).max() <= 1


def test_batch_of_two_runs(exported, small_generator):
    runner = OrtRunners(exported).get("face_restorer")
    g = torch.Generator().manual_seed(1)
    image = torch.tanh(torch.randn(2, 3, 512, 512, generator=g))
    parse = torch.nn.functional.one_hot(torch.randint(0, 19, (2, 512, 512), generator=g), 19).permute(0, 3, 1, 2).float()
    got = runner(image=image, parse=parse)["restored"]
    with torch.no_grad():
        want = small_generator(image, parse)
    assert got.shape == (2, 3, 512, 512)
    assert (got - want).abs().max() <= 1e-4


def test_open_restorer_uses_the_chosen_backend(exported, tmp_path):
    (tmp_path / "onnx").symlink_to(exported, target_is_directory=True)
    for backend in ("onnxruntime", "auto"):
        ort = open_restorer(ModelService(EngineConfig(models_dir=tmp_path, device="cpu", backend=backend)))
        assert ort.backend == "onnxruntime"
    # torch chosen: the export is not used, and without the checkpoint that is an error naming it
    from engine.errors import ModelMissing

    with pytest.raises(ModelMissing, match=r"psfrgan_epoch15_net_G\.pth"):
        open_restorer(ModelService(EngineConfig(models_dir=tmp_path, device="cpu", backend="torch")))


def test_a_damaged_export_falls_back_to_torch(tmp_path, caplog):
    from engine.errors import ModelMissing

    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "face_restorer.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelMissing, match=r"psfrgan_epoch15_net_G\.pth"):  # torch was tried: no checkpoint
        open_restorer(ModelService(EngineConfig(models_dir=tmp_path, device="cpu", backend="onnxruntime")))
    assert "falls back to torch" in caplog.text


@pytest.mark.slow
def test_fullsize_generator_on_onnxruntime_matches_the_fixtures(fixtures_dir, tmp_path, face_and_map):
    from engine.networks.psfrgan import load_psfrgan
    from engine.testing.official_files import write_official_psfrgan

    torch.set_num_threads(min(2, torch.get_num_threads()))
    net = load_psfrgan(write_official_psfrgan(tmp_path / "psfrgan_epoch15_net_G.pth"))
    res = export_onnx("face_restorer", net, tmp_path / "onnx" / "face_restorer.onnx", profile=PROFILE)
    face, onehot = face_and_map
    got = FaceRestorer.from_runner(OrtRunners(tmp_path / "onnx").get("face_restorer")).restore(face, onehot)
    center = np.load(fixtures_dir / "psfr_A_center128_expected.npy")
    corner = np.load(fixtures_dir / "psfr_A_corner32_expected.npy")
    assert np.abs(got.raw[:, :, 192:320, 192:320] - center).max() <= 1e-4
    assert np.abs(got.raw[:, :, :32, :32] - corner).max() <= 1e-4
    expected = np.asarray(Image.open(fixtures_dir / "psfr_A_expected.png").convert("RGB")).astype(int)
    assert np.abs(got.image.astype(int) - expected).max() <= 1
    print(f"\n[fullsize] face_restorer: export {res.seconds:.1f} s, {res.info.onnx_size / 1e6:.0f} MB")


def test_exporter_loads_the_generator_from_the_models_folder(tmp_path):
    from engine.networks.psfrgan import PSFRGenerator as Full
    from engine.testing.official_files import write_official_psfrgan
    from export.sources import ComponentLoader

    write_official_psfrgan(tmp_path / "psfrgan_epoch15_net_G.pth")
    src = ComponentLoader(EngineConfig(models_dir=tmp_path, device="cpu")).load("face_restorer")
    assert isinstance(src.module, Full)
    assert [w.role for w in src.weights] == ["restorer"]
    assert (tmp_path / "psfrgan_epoch15_net_G.safetensors").is_file()  # exports read the safe copy
