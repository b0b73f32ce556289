"""SD1.5 loading without a hub: diffusers folders, LDM single files, and refusal of other model families."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
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


# -- pickles are converted once by the model service (never unpickled on later loads) -----------------


class _Payload:
    """Unpickling this calls open(marker, 'w'): a file appears if the pickle's code ever runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _service(models, **paths):
    from engine.config import EngineConfig
    from engine.models.service import ModelService

    return ModelService(EngineConfig(models_dir=models, device="cpu", **paths))


def _modules(comps):
    return {"unet": comps.unet, "vae": comps.vae, "text_encoder": comps.text_encoder}


def _assert_bit_identical(a, b):
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = _modules(a)[name].state_dict(), _modules(b)[name].state_dict()
        assert set(sa) == set(sb), name
        for k in sa:
            assert sa[k].dtype == sb[k].dtype, f"{name}.{k}"
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}"


@pytest.fixture
def no_unpickling(monkeypatch):
    """After this is called, any torch.load fails the test."""

    def arm():
        def refuse(*_a, **_k):
            raise AssertionError("torch.load was called: a pickle was read again")

        monkeypatch.setattr(torch, "load", refuse)

    return arm


def test_sd15_ckpt_is_converted_once_and_loads_bit_identical(tiny, single_file, tmp_path, no_unpickling):
    from safetensors.torch import load_file

    state = load_file(str(single_file))
    ckpt = tmp_path / "work" / "tiny-sd15.ckpt"
    ckpt.parent.mkdir()
    # a Lightning checkpoint as A1111 users keep them: non-tensor entries beside the state dict
    torch.save({"state_dict": {**state, "some_step": 3}, "global_step": 470000, "epoch": 6}, ckpt)
    models = tmp_path / "models"
    models.mkdir()
    direct = load_sd15(ckpt, config_dir=tiny / "sd15")  # the weights-only pickle read, as before

    first = _service(models, sd_model=str(ckpt)).runtime_path("sd15")
    assert first.suffix == ".safetensors"
    assert first.parent.parent == models / ".converted"
    assert not ckpt.with_suffix(".safetensors").exists()  # nothing written beside the user's file
    no_unpickling()
    again = _service(models, sd_model=str(ckpt)).runtime_path("sd15")
    assert again == first
    _assert_bit_identical(load_sd15(again, config_dir=tiny / "sd15"), direct)

    st = ckpt.stat()  # a changed source is converted again (the stale copy is not used)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match=r"torch\.load was called"):
        _service(models, sd_model=str(ckpt)).runtime_path("sd15")


def test_sd15_ckpt_in_the_models_folder_is_found_and_converted(tiny, single_file, tmp_path):
    from safetensors.torch import load_file

    models = tmp_path / "models"
    (models / "sd15").mkdir(parents=True)
    torch.save(load_file(str(single_file)), models / "sd15" / "mine.ckpt")
    service = _service(models)
    assert service.find("sd15") == models / "sd15" / "mine.ckpt"
    out = service.runtime_path("sd15")
    assert out.name == "mine.safetensors"
    assert out.parent.parent == models / ".converted"
    assert read_safetensors_header(out).tensors.keys() == load_file(str(single_file)).keys()


def test_sd15_ckpt_with_code_is_refused_before_it_runs_and_nothing_is_written(tmp_path):
    from engine.errors import UnsafeCheckpoint

    marker = tmp_path / "marker"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {UNET_IN: _Payload(str(marker))}}, ckpt)
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(UnsafeCheckpoint, match="refused for safety"):
        _service(models, sd_model=str(ckpt)).runtime_path("sd15")
    assert not marker.exists()
    assert not list(models.rglob("*.safetensors"))
    assert not list(models.rglob("source.json"))


def test_sd15_ckpt_of_another_family_is_refused_before_conversion(tmp_path):
    ckpt = tmp_path / "sdxl.ckpt"
    torch.save({"state_dict": {"conditioner.embedders.1.model.ln_final.weight": torch.zeros(4),
                               UNET_IN: torch.zeros(320, 4, 3, 3)}}, ckpt)
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(WrongModelFamily, match=r"sdxl\.ckpt is SDXL"):
        _service(models, sd_model=str(ckpt)).runtime_path("sd15")
    assert not list(models.rglob("*.safetensors"))


def _pickled_folder(src, dst):
    """A copy of a diffusers folder whose component weights are pickles (.bin), as older downloads are."""
    from safetensors.torch import load_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    for sub, st_name, bin_name in (("unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                                   ("vae", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                                   ("text_encoder", "model.safetensors", "pytorch_model.bin")):
        torch.save(load_file(str(src / sub / st_name)), dst / sub / bin_name)
    return dst


def test_diffusers_folder_of_bin_weights_is_converted_once_and_loads_bit_identical(tiny, tmp_path, no_unpickling):
    folder = _pickled_folder(tiny / "sd15", tmp_path / "work" / "old-sd15")
    (folder / "safety_checker").mkdir()
    (folder / "safety_checker" / "pytorch_model.bin").write_bytes(b"never read")
    (folder / "v1-5-pruned-emaonly.ckpt").write_bytes(b"never read")  # beside the components, as in hub clones
    models = tmp_path / "models"
    models.mkdir()
    direct = load_sd15(folder)

    out = _service(models, sd_model=str(folder)).runtime_path("sd15")
    assert out.name == "old-sd15"
    assert out.parent.parent == models / ".converted"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors")) == [
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"]
    assert not list(out.rglob("*.bin"))
    assert not list(out.rglob("*.ckpt"))
    assert (out / "model_index.json").read_text() == (folder / "model_index.json").read_text()
    assert not (out / "safety_checker").exists()
    assert not list(folder.rglob("*.safetensors"))  # the user's folder is not written to
    no_unpickling()
    assert _service(models, sd_model=str(folder)).runtime_path("sd15") == out
    _assert_bit_identical(load_sd15(out), direct)

    st = (folder / "unet" / "diffusion_pytorch_model.bin").stat()
    os.utime(folder / "unet" / "diffusion_pytorch_model.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match=r"torch\.load was called"):
        _service(models, sd_model=str(folder)).runtime_path("sd15")


def test_a_safetensors_folder_and_file_are_used_as_they_are(tiny, single_file, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    assert _service(models, sd_model=str(tiny / "sd15")).runtime_path("sd15") == tiny / "sd15"
    assert _service(models, sd_model=str(single_file)).runtime_path("sd15") == single_file
    assert not (models / ".converted").exists()


def test_a_session_pipeline_on_pickled_weights_reads_no_pickle_the_second_time(tiny, tmp_path, no_unpickling):
    from engine.api import GenerateRequest
    from engine.models.service import ModelService
    from engine.pipeline.generate import WPlusPipeline
    from engine.testing.tiny import tiny_config, tiny_wplus

    root = tmp_path / "models"
    _pickled_folder(tiny / "sd15", root / "sd15")
    shutil.copy(tiny / "wplus_adapter.bin", root / "wplus_adapter.bin")
    config = tiny_config(root)
    request = GenerateRequest(prompt="a photo", wplus=tiny_wplus(), width=64, height=64, steps=2, seed=3)
    first = WPlusPipeline.from_service(ModelService(config)).render(request)
    no_unpickling()
    second = WPlusPipeline.from_service(ModelService(config)).render(request)
    assert np.array_equal(first.images[0], second.images[0])


def test_a_folder_with_a_pickle_that_carries_code_is_refused_and_leaves_no_copy(tiny, tmp_path):
    from engine.errors import UnsafeCheckpoint

    folder = _pickled_folder(tiny / "sd15", tmp_path / "work" / "evil-sd15")
    marker = tmp_path / "marker"
    torch.save({"conv_in.weight": _Payload(str(marker))}, folder / "unet" / "diffusion_pytorch_model.bin")
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(UnsafeCheckpoint, match=r"diffusion_pytorch_model\.bin was refused for safety"):
        _service(models, sd_model=str(folder)).runtime_path("sd15")
    assert not marker.exists()
    assert not any((models / ".converted").iterdir())  # the half-made copy was removed
