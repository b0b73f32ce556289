"""SD1.5 loading without a hub: diffusers folders, LDM single files, and refusal of other model families."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import ModelCorrupt, ModelMissing, WrongModelFamily
from engine.models.safe_load import read_safetensors_header
from engine.networks.sd15 import default_config_dir, detect_family, load_sd15
from engine.testing.tiny import write_ldm_single_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def single_file(tiny, tmp_path_factory):
    return write_ldm_single_file(tiny / "sd15", tmp_path_factory.mktemp("single") / "tiny-sd15.safetensors")


def _same_weights(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_shipped_configs_are_public_sd15_values():
    root = default_config_dir()
    unet = json.loads((root / "unet" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    clip = json.loads((root / "text_encoder" / "config.json").read_text())
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert unet["cross_attention_dim"] == 768
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert vae["block_out_channels"] == [128, 256, 512, 512]
    assert vae["scaling_factor"] == 0.18215
    assert (clip["hidden_size"], clip["num_hidden_layers"], clip["num_attention_heads"]) == (768, 12, 12)
    assert (clip["intermediate_size"], clip["vocab_size"], clip["hidden_act"]) == (3072, 49408, "quick_gelu")
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    assert sched["steps_offset"] == 1
    assert sched["num_train_timesteps"] == 1000
    assert (root / "tokenizer" / "LICENSE").read_text().count("OpenAI") >= 1


def test_full_size_modules_from_shipped_configs_have_sd15_parameter_counts():
    from engine.networks.sd15 import _clip_factory, _load_json, _unet_factory, _vae_factory

    root = default_config_dir()
    with torch.device("meta"):
        unet = _unet_factory(_load_json(root / "unet" / "config.json"))()
        vae = _vae_factory(_load_json(root / "vae" / "config.json"))()
        clip = _clip_factory(_load_json(root / "text_encoder" / "config.json"))()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 859_520_964  # REFERENCE.md §7.1: 859.5 M
    assert 83_000_000 < count(vae) < 84_000_000
    assert 123_000_000 < count(clip) < 123_100_000


def test_tokenizer_matches_clip_ids(tiny):
    comps = load_sd15(tiny / "sd15")
    ids = comps.tokenizer("a photo of a face", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 1710, 49407]
    assert len(ids) == 77
    assert ids[-1] == 49407


def test_diffusers_folder_loads_offline(tiny):
    comps = load_sd15(tiny / "sd15")
    assert comps.unet.config.cross_attention_dim == 768
    assert comps.vae_scale_factor == 8
    assert comps.scheduler_config["beta_schedule"] == "scaled_linear"
    assert set(comps.fingerprints) >= {"sd15/unet/diffusion_pytorch_model.safetensors", "sd15/text_encoder/model.safetensors"}
    assert comps.model_id == load_sd15(tiny / "sd15").model_id
    assert not comps.unet.training
    assert not any(p.requires_grad for p in comps.unet.parameters())


def test_single_file_ldm_layout_equals_folder(tiny, single_file):
    header = read_safetensors_header(single_file).tensors
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in header)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in header)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in header)
    folder = load_sd15(tiny / "sd15")
    single = load_sd15(single_file, config_dir=tiny / "sd15")
    assert _same_weights(folder.unet, single.unet) == 0
    assert _same_weights(folder.vae, single.vae) == 0
    assert _same_weights(folder.text_encoder, single.text_encoder) == 0
    ids = folder.tokenizer("x", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(folder.text_encoder(ids)[0], single.text_encoder(ids)[0])


def test_single_file_in_fp16_loads_as_requested_dtype(tiny, tmp_path):
    from safetensors.torch import load_file

    src = write_ldm_single_file(tiny / "sd15", tmp_path / "a.safetensors")
    half = {k: v.half() for k, v in load_file(str(src)).items()}
    save_file(half, str(tmp_path / "fp16.safetensors"))
    comps = load_sd15(tmp_path / "fp16.safetensors", config_dir=tiny / "sd15", dtype=torch.float32)
    assert next(comps.unet.parameters()).dtype == torch.float32


def test_single_file_without_vae_needs_separate_vae(tiny, tmp_path):
    f = write_ldm_single_file(tiny / "sd15", tmp_path / "novae.safetensors", include_vae=False)
    with pytest.raises(ModelCorrupt, match="no VAE"):
        load_sd15(f, config_dir=tiny / "sd15")
    comps = load_sd15(f, config_dir=tiny / "sd15", vae=tiny / "sd15" / "vae")
    assert comps.vae_source.endswith("vae")
    assert any(k.startswith("vae:") for k in comps.fingerprints)


def test_separate_vae_as_ldm_single_file(tiny, tmp_path):
    from diffusers import AutoencoderKL

    from engine.testing.tiny import _vae_to_ldm

    vae = AutoencoderKL.from_pretrained(str(tiny / "sd15" / "vae"), local_files_only=True)
    cfg = json.loads((tiny / "sd15" / "vae" / "config.json").read_text())
    ldm = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in _vae_to_ldm(vae.state_dict(), cfg).items()}
    save_file(ldm, str(tmp_path / "vae-ft.safetensors"))
    comps = load_sd15(tiny / "sd15", vae=tmp_path / "vae-ft.safetensors", config_dir=tiny / "sd15")
    assert _same_weights(comps.vae, vae) == 0


def _fake(path, tensors):
    save_file({k: torch.zeros(s) for k, s in tensors.items()}, str(path))
    return path


UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
ATTN2_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        ({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (4,),
          "conditioner.embedders.1.model.ln_final.weight": (4,), UNET_IN: (320, 4, 3, 3)}, "SDXL"),
        ({"cond_stage_model.model.ln_final.weight": (4,), UNET_IN: (320, 4, 3, 3)}, "SD 2.x"),
        ({UNET_IN: (320, 4, 3, 3), ATTN2_K: (320, 1024), "cond_stage_model.transformer.x": (2,)}, "SD 2.x"),
        ({UNET_IN: (320, 9, 3, 3), ATTN2_K: (320, 768)}, "inpainting"),
        ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (6, 2)}, "SD3"),
        ({"double_blocks.0.img_attn.qkv.weight": (6, 2), "single_blocks.0.linear1.weight": (2, 2)}, "Flux"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "LoRA"),
        ({"encoder.down.0.block.0.conv1.weight": (4, 3, 3, 3), "decoder.up.0.block.0.conv1.weight": (4, 4, 3, 3)},
         "VAE"),
        ({"control_model.input_hint_block.0.weight": (16, 3, 3, 3)}, "ControlNet"),
        ({"some.other.weight": (3,)}, "not a Stable Diffusion checkpoint"),
    ],
)
def test_other_families_are_refused_by_name(tmp_path, keys, family):
    path = _fake(tmp_path / "other.safetensors", keys)
    assert family in detect_family({k: tuple(s) for k, s in keys.items()})
    with pytest.raises(WrongModelFamily, match=family) as err:
        load_sd15(path)
    assert "other.safetensors" in err.value.user_message
    assert "SD1.5" in err.value.hint or "1.5" in err.value.hint


def test_sdxl_diffusers_folder_is_refused(tiny, tmp_path):
    folder = tmp_path / "sdxl"
    shutil.copytree(tiny / "sd15", folder, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg.update(cross_attention_dim=2048, addition_embed_type="text_time")
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WrongModelFamily, match="SDXL"):
        load_sd15(folder)


def test_truncated_single_file_names_the_file(single_file, tmp_path):
    data = single_file.read_bytes()
    broken = tmp_path / "half-download.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelCorrupt, match=r"half-download\.safetensors") as err:
        load_sd15(broken)
    assert "truncated" in err.value.user_message


def test_garbage_and_missing_paths(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelCorrupt, match=r"junk\.safetensors"):
        load_sd15(junk)
    with pytest.raises(ModelMissing, match="not found"):
        load_sd15(tmp_path / "nope.safetensors")
    with pytest.raises(ModelMissing, match=r"unet/config\.json"):
        load_sd15(tmp_path)
