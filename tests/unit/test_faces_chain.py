"""The face chain end to end on a real photo with small real networks (full-size variant: marked slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.backends.torch_backend import module_runner
from engine.cancel import CancelToken
from engine.config import EngineConfig
from engine.errors import Cancelled, FaceNotFound, InvalidInput, ModelCorrupt, ModelMissing
from engine.faces.chain import NO_PARSER_WARNING, FaceChain
from engine.faces.preprocess import e4e_input
from engine.models.service import ModelService

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def chain(encoder, parser, detector):
    encoder.inputs.clear()
    return FaceChain(lambda: module_runner("face_encoder", encoder), lambda: parser, detector=detector)


def test_photo_to_identity_runs_the_official_chain(chain, encoder, parser, astronaut):
    stages = []
    ident = chain.encode_identity(astronaut, name="Eileen", progress=lambda p: stages.append(p.stage))
    assert ident.wplus.shape == (1, 18, 512)
    assert np.isfinite(ident.wplus).all()
    assert ident.name == "Eileen"
    assert ident.aligned_face.shape == (512, 512, 3)
    assert ident.info["whitened"] is True
    assert ident.info["faces_found"] == 1
    assert ident.info["quad_width"] > 160
    assert stages == ["detect", "align", "parse", "encode", "done"]
    # the encoder saw exactly the official preprocessing of the aligned face with the parser's mask
    expected_input = e4e_input(ident.aligned_face, parser.mask(ident.aligned_face))
    assert np.array_equal(encoder.inputs[-1], expected_input)
    with torch.no_grad():
        assert np.allclose(ident.wplus, encoder(torch.from_numpy(expected_input)).numpy())


def test_without_parser_the_chain_warns_and_continues(encoder, detector, astronaut, caplog):
    chain = FaceChain(lambda: module_runner("face_encoder", encoder), None, detector=detector)
    ident = chain.encode_identity(astronaut)
    assert ident.info["whitened"] is False
    assert NO_PARSER_WARNING in ident.info["warnings"]
    assert "not whitened" in caplog.text
    assert np.array_equal(encoder.inputs[-1], e4e_input(ident.aligned_face, None))


def test_aligned_input_skips_detection(chain, encoder, astronaut):
    small = np.ascontiguousarray(astronaut[::2, ::2])  # 256² "aligned" face → bilinear to 512
    ident = chain.encode_identity(small, aligned=True)
    assert ident.aligned_face.shape == (512, 512, 3)
    assert "faces_found" not in ident.info
    assert ident.info["align_mode"] == "aligned input"


def test_no_face_gives_advice(chain):
    with pytest.raises(FaceNotFound) as exc:
        chain.encode_identity(np.full((300, 400, 3), 200, np.uint8))
    assert "--aligned" in exc.value.hint


def test_face_index_out_of_range(chain, astronaut):
    with pytest.raises(InvalidInput, match="has 1 face"):
        chain.encode_identity(astronaut, face_index=3)


def test_too_small_face_is_refused_like_the_official_min_size(chain, astronaut):
    from PIL import Image

    # 0.8× the photo: the face is still found, but its crop (≈146 px) is not wider than 160
    small = np.asarray(Image.fromarray(astronaut).resize((410, 410), Image.Resampling.LANCZOS))
    with pytest.raises(FaceNotFound, match="too small"):
        chain.encode_identity(small)


def test_cancel_between_stages(chain, astronaut):
    token = CancelToken()

    def progress(p):
        if p.stage == "align":
            token.cancel()

    with pytest.raises(Cancelled):
        chain.encode_identity(astronaut, token=token, progress=progress)


def test_burst_averages_accepted_frames_and_reports_dropped(chain, encoder, astronaut):
    import cv2

    good = [astronaut, np.ascontiguousarray(astronaut[:, ::-1])]
    blurred = cv2.GaussianBlur(astronaut, (0, 0), 3)
    blank = np.full((300, 300, 3), 128, np.uint8)
    result = chain.encode_burst([good[0], blurred, blank, good[1]])
    assert result.used == 2
    dropped = dict(result.dropped)
    assert set(dropped) == {1, 2}
    assert "blurry" in dropped[1]
    assert dropped[2] == "no face found"
    # the average of the two accepted frames' codes, recomputed from the inputs e4e received
    assert len(encoder.inputs) == 2
    with torch.no_grad():
        singles = [encoder(torch.from_numpy(x)).numpy() for x in encoder.inputs[:2]]
    assert np.allclose(result.identity.wplus, np.mean(singles, axis=0), atol=1e-6)
    assert result.identity.info["used"] == 2


def test_burst_with_nothing_usable_explains_why(chain):
    with pytest.raises(FaceNotFound, match="#0: no face found"):
        chain.encode_burst([np.full((100, 100, 3), 10, np.uint8)])
    with pytest.raises(InvalidInput):
        chain.encode_burst([])


def test_from_service_missing_e4e_names_the_expected_file(tmp_path):
    with pytest.raises(ModelMissing, match=r"e4e_ffhq_encode\.pt") as exc:
        FaceChain.from_service(ModelService(EngineConfig(models_dir=tmp_path)))
    assert exc.value.hint


def test_from_service_finds_defaults_and_reports_a_damaged_e4e(tmp_path, astronaut, detector):
    (tmp_path / "e4e_ffhq_encode.pt").write_bytes(b"\x80\x02truncated")
    chain = FaceChain.from_service(ModelService(EngineConfig(models_dir=tmp_path, device="cpu")))
    assert chain.e4e_path.endswith("e4e_ffhq_encode.pt")
    assert chain.parser_path == ""
    chain._detector = detector
    with pytest.raises(ModelCorrupt):
        chain.encode_identity(astronaut)


def test_from_service_takes_a_given_parser_path_from_the_current_directory(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "e4e_ffhq_encode.safetensors").write_bytes(b"")
    (models / "my_parser.pth").write_bytes(b"")  # not this one: a given name is not a models-folder name
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    (elsewhere / "my_parser.pth").write_bytes(b"")
    monkeypatch.chdir(elsewhere)
    chain = FaceChain.from_service(ModelService(EngineConfig(models_dir=models, parser="my_parser.pth")))
    assert chain.e4e_path.endswith(".safetensors")
    assert chain.parser_path == str(elsewhere / "my_parser.pth")
    monkeypatch.chdir(tmp_path)  # no my_parser.pth here: refused, never replaced by the models folder's
    with pytest.raises(ModelMissing, match=r"my_parser\.pth does not exist"):
        FaceChain.from_service(ModelService(EngineConfig(models_dir=models, e4e="my_parser.pth")))


@pytest.mark.slow
def test_full_size_rule_models_give_a_finite_wplus(tmp_path_factory, fixtures_dir, astronaut):
    """Full-size e4e (≈1.2 GB file) and ParseNet with rule weights through `from_config` (≈1–2 min)."""
    from engine.testing.official_files import write_official_e4e
    from engine.testing.wbn import rule_state_dict

    models = tmp_path_factory.mktemp("models")
    e4e_keys = json.loads((fixtures_dir / "e4e_manifest.json").read_text())["keys"]
    write_official_e4e(models / "e4e_ffhq_encode.pt", {e["key"]: tuple(e["shape"]) for e in e4e_keys})
    pn_keys = json.loads((fixtures_dir / "parsenet_manifest.json").read_text())["keys"]
    torch.save(rule_state_dict({e["key"]: e["shape"] for e in pn_keys}), models / "parse_multi_iter_90000.pth")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    chain = FaceChain.from_service(ModelService(EngineConfig(models_dir=models, device="cpu")))
    ident = chain.encode_identity(astronaut)
    assert ident.info["whitened"] is True
    assert ident.wplus.shape == (1, 18, 512)
    assert np.isfinite(ident.wplus).all()
