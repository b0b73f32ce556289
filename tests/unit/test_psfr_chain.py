"""Restoration in the face chain follows the official `-s` order (PSFRGAN.md §1), with small real networks.

The whitening mask and the restorer's one-hot both come from ParseNet's logits of the ORIGINAL aligned
face, and e4e reads the restored face's truncated PNG values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.backends.torch_backend import module_runner
from engine.config import EngineConfig
from engine.errors import ModelMissing
from engine.faces.chain import FaceChain
from engine.faces.parse import parser_input
from engine.faces.preprocess import e4e_input, removal_mask
from engine.faces.restore import FaceRestorer, open_restorer, parse_onehot, tensor2pil
from engine.models.service import ModelService
from engine.networks.psfrgan import PSFRGenerator
from engine.testing.wbn import fill_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SpyGenerator(torch.nn.Module):
    """A small real PSFRGenerator (512² in and out, 4–16 channels) that records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.net = PSFRGenerator(ch_range=(4, 16), spade_hidden=8)
        fill_module(self.net, "test:small_psfrgan.")
        # Spread the output well beyond [-1, 1] so clipping and truncation both show.
        with torch.no_grad():
            self.net.img_out.weight.mul_(4.0)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, image, onehot):
        out = self.net(image, onehot)
        self.calls.append((image.clone(), onehot.clone(), out.clone()))
        return out


@pytest.fixture(scope="module")
def spy():
    return SpyGenerator().eval()


@pytest.fixture
def chain(encoder, parser, spy, detector):
    encoder.inputs.clear()
    spy.calls.clear()
    return FaceChain(lambda: module_runner("face_encoder", encoder), lambda: parser, detector=detector,
                     restorer_loader=lambda: FaceRestorer.from_module(spy))


def test_restore_follows_the_official_order(chain, encoder, parser, spy, astronaut):
    ident = chain.encode_identity(astronaut, restore=True)
    original = ident.aligned_face
    assert ident.info["restored"] is True
    assert ident.info["whitened"] is True
    assert len(spy.calls) == 1
    image_in, onehot_in, raw = spy.calls[0]
    # the restorer saw the original aligned face and the one-hot of ITS parse logits
    assert np.array_equal(image_in.numpy(), parser_input(original))
    assert torch.equal(onehot_in, parse_onehot(parser.logits(original)))
    # the identity carries the official tensor2pil of the output: clipped and truncated, not rounded
    restored = ident.restored_face
    assert np.array_equal(restored, tensor2pil(raw))
    scaled = (np.clip(raw[0].numpy().transpose(1, 2, 0), -1, 1) + 1) / 2 * 255
    assert (np.rint(scaled).astype(np.uint8) != restored).mean() > 0.1  # rounding would differ here
    assert (np.abs(raw.numpy()) > 1).mean() > 0.05  # and clipping mattered
    # e4e saw the restored PNG values, whitened with the ORIGINAL face's mask
    expected = e4e_input(restored, parser.mask(original))
    assert np.array_equal(encoder.inputs[-1], expected)
    mask_of_restored = parser.mask(restored)
    assert not np.array_equal(mask_of_restored, parser.mask(original))  # the test can tell them apart
    assert not np.array_equal(encoder.inputs[-1], e4e_input(restored, mask_of_restored))
    assert not np.array_equal(encoder.inputs[-1], e4e_input(original, parser.mask(original)))
    assert ident.info["whitened_fraction"] == pytest.approx(float((parser.mask(original) > 0).mean()))


def test_restore_is_off_by_default(chain, encoder, parser, spy, astronaut):
    ident = chain.encode_identity(astronaut)
    assert spy.calls == []
    assert ident.restored_face is None
    assert ident.info["restored"] is False
    assert np.array_equal(encoder.inputs[-1], e4e_input(ident.aligned_face, parser.mask(ident.aligned_face)))


def test_mask_helper_agrees_with_the_parser(parser, astronaut):
    face = np.ascontiguousarray(astronaut)
    labels = parser.logits(face)[0].argmax(dim=0).numpy()
    assert np.array_equal(removal_mask(labels), parser.mask(face))


def test_missing_psfrgan_names_the_file_and_where_it_goes(tmp_path, encoder, parser, detector, astronaut):
    config = EngineConfig(models_dir=tmp_path, device="cpu")
    with pytest.raises(ModelMissing) as exc:
        open_restorer(ModelService(config))
    assert "psfrgan_epoch15_net_G.pth" in exc.value.user_message
    assert str(tmp_path / "psfrgan_epoch15_net_G.pth") in exc.value.user_message
    assert "models folder" in exc.value.hint
    chain = FaceChain(lambda: module_runner("face_encoder", encoder), lambda: parser, detector=detector,
                      restorer_loader=lambda: open_restorer(ModelService(config)))
    encoder.inputs.clear()
    with pytest.raises(ModelMissing, match=r"psfrgan_epoch15_net_G\.pth"):
        chain.encode_identity(astronaut, restore=True)
    assert encoder.inputs == []  # refused before any work
    assert chain.encode_identity(astronaut).info["restored"] is False  # without restore it still works


def test_restore_without_parser_says_so(encoder, spy, detector, astronaut):
    chain = FaceChain(lambda: module_runner("face_encoder", encoder), None, detector=detector, restorer_loader=lambda: FaceRestorer.from_module(spy))
    with pytest.raises(ModelMissing, match="parse_multi_iter_90000"):
        chain.encode_identity(astronaut, restore=True)


def test_session_passes_restore_through(tmp_path, astronaut):
    """Through the real session: with restore the missing PSFRGAN file is reported; without it, e4e loads."""
    from engine.errors import ModelCorrupt
    from engine.session import Session

    (tmp_path / "e4e_ffhq_encode.pt").write_bytes(b"not a checkpoint")
    session = Session(EngineConfig(models_dir=tmp_path, device="cpu"))
    with pytest.raises(ModelMissing, match=r"psfrgan_epoch15_net_G\.pth"):
        session.encode_identity(astronaut, aligned=True, restore=True)
    with pytest.raises(ModelCorrupt):
        session.encode_identity(astronaut, aligned=True)
