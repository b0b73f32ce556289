"""`load_e4e_checkpoint(path, parts=…)`: the StyleGAN2 preview loads only the decoder (and latent_avg).

A reduced-channel rule-weight decoder (same keys as the official one, 18×512 W+) keeps the files small;
the encoder keys of the pickles are zero-stride placeholders with the official shapes.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.errors import ModelCorrupt, UnsafeCheckpoint
from engine.models.convert import convert_to_safetensors
from engine.networks.e4e import e4e_layout, load_e4e_checkpoint
from engine.networks.stylegan2.modules import GeneratorShape
from engine.pipeline.face_preview import StyleGANPreview
from engine.testing.stylegan2 import rule_decoder_state, rule_wplus, write_e4e_checkpoint

SMALL = GeneratorShape.reduced(32, size=64)  # 64² output: 10 W+ rows of 512
FIRST_ENCODER_KEY = "input_layer.0.weight"  # the first key of the official encoder layout


@pytest.fixture(scope="module")
def decoder_state():
    return rule_decoder_state(SMALL)


@pytest.fixture(scope="module")
def full_pickle(tmp_path_factory, decoder_state):
    return write_e4e_checkpoint(tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt", decoder_state)


@pytest.fixture(scope="module")
def decoder_only_safetensors(tmp_path_factory, decoder_state, full_pickle):
    latent_avg = torch.load(full_pickle, weights_only=True)["latent_avg"]
    flat = {f"decoder.{k}": v.contiguous() for k, v in decoder_state.items()}
    flat["latent_avg"] = latent_avg
    path = tmp_path_factory.mktemp("dec") / "e4e_ffhq_encode.safetensors"
    save_file(flat, str(path), metadata={"wplus_layout": "e4e", "opts": "{}"})
    return path


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_first_encoder_key_is_the_layouts_first():
    assert next(iter(e4e_layout())) == FIRST_ENCODER_KEY


def test_decoder_only_file_is_accepted_for_the_preview(decoder_only_safetensors, decoder_state):
    ckpt = load_e4e_checkpoint(decoder_only_safetensors, parts=("decoder",))
    assert ckpt.encoder_state == {}
    assert _same(ckpt.decoder_state, decoder_state)
    assert tuple(ckpt.latent_avg.shape) == (18, 512)
    preview = StyleGANPreview.from_checkpoint(decoder_only_safetensors)
    reference = StyleGANPreview.from_state_dict(decoder_state)
    w = rule_wplus("input:wplus#parts", n_latent=preview.generator.n_latent)
    image = preview.render(w, 64)
    assert image.shape == (64, 64, 3)
    assert image.std() > 0
    np.testing.assert_array_equal(image, reference.render(w, 64))


@pytest.mark.parametrize("parts", [("encoder", "decoder"), ("encoder",)])
def test_decoder_only_file_is_refused_for_the_encoder(decoder_only_safetensors, parts):
    with pytest.raises(ModelCorrupt) as info:
        load_e4e_checkpoint(decoder_only_safetensors, parts=parts)
    msg = info.value.user_message
    assert str(decoder_only_safetensors) in msg
    assert f"key '{FIRST_ENCODER_KEY}' is missing" in msg
    assert "Encoder4Editing" in msg


def test_pickle_parts_keep_only_what_was_asked(full_pickle, decoder_state):
    both = load_e4e_checkpoint(full_pickle)
    dec = load_e4e_checkpoint(full_pickle, parts=("decoder",))
    enc = load_e4e_checkpoint(full_pickle, parts=("encoder",))
    assert dec.encoder_state == {}
    assert enc.decoder_state == {}
    assert _same(dec.decoder_state, decoder_state)
    assert _same(dec.decoder_state, both.decoder_state)
    assert enc.encoder_state.keys() == both.encoder_state.keys() == e4e_layout().keys()
    for ckpt in (dec, enc):
        assert torch.equal(ckpt.latent_avg, both.latent_avg)
        assert ckpt.opts == both.opts
    # the kept decoder tensors are usable after the file is gone (a mapped file is not needed later)
    preview = StyleGANPreview.from_checkpoint(full_pickle)
    assert preview.generator.shape == SMALL


def test_legacy_pickle_and_safetensors_conversion_load_the_decoder(full_pickle, decoder_state, tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(full_pickle, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert _same(load_e4e_checkpoint(legacy, parts=("decoder",)).decoder_state, decoder_state)
    converted = convert_to_safetensors(full_pickle, tmp_path / "e4e.safetensors")
    ckpt = load_e4e_checkpoint(converted, parts=("decoder",))
    assert ckpt.encoder_state == {}
    assert _same(ckpt.decoder_state, decoder_state)
    assert load_e4e_checkpoint(converted, parts=("encoder",)).encoder_state.keys() == e4e_layout().keys()


def test_foreign_keys_are_still_refused_with_parts(decoder_state, tmp_path):
    flat = {f"decoder.{k}": v.contiguous() for k, v in decoder_state.items()}
    flat["latent_avg"] = torch.zeros(18, 512)
    flat["discriminator.w"] = torch.zeros(2)
    path = tmp_path / "odd.safetensors"
    save_file(flat, str(path), metadata={"wplus_layout": "e4e"})
    with pytest.raises(ModelCorrupt, match=r"unexpected key 'discriminator\.w'"):
        load_e4e_checkpoint(path, parts=("decoder",))
    no_avg = tmp_path / "no_avg.safetensors"
    save_file({k: v for k, v in flat.items() if k.startswith("decoder.")}, str(no_avg))
    with pytest.raises(ModelCorrupt, match="'latent_avg' is missing"):
        load_e4e_checkpoint(no_avg, parts=("decoder",))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_code_in_a_pickle_is_refused_for_the_decoder_too(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"decoder.x": _Payload(str(marker))}, "latent_avg": torch.zeros(18, 512)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpoint, match="refused for safety"):
        load_e4e_checkpoint(path, parts=("decoder",))
    assert not marker.exists()
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"a": _Payload(str(marker))}, protocol=2))
    with pytest.raises(UnsafeCheckpoint):
        load_e4e_checkpoint(raw, parts=("decoder",))
    assert not marker.exists()


def test_unknown_parts_are_a_programming_error(full_pickle):
    for bad in ((), ("unet",), "decoder"):
        with pytest.raises(ValueError, match="parts"):
            load_e4e_checkpoint(full_pickle, parts=bad)
