"""LoRA on tiny real models: equal to diffusers' load_lora_weights + adapter weights, layouts, errors, restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.api import GenerateRequest, LoraSpec
from engine.errors import InvalidInput, ModelMissing, WrongModelFamily
from engine.pipeline.generate import WPlusPipeline
from engine.testing.tiny import tiny_wplus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = {"width": 64, "height": 64}


@pytest.fixture(scope="module")
def pipe(tiny):
    return WPlusPipeline.from_files(tiny / "sd15", tiny / "wplus_adapter.bin", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def lora_files(tiny, tmp_path_factory):
    from engine.networks.sd15 import load_sd15
    from engine.testing.controls import write_kohya_lora, write_peft_lora

    c = load_sd15(tiny / "sd15")
    d = tmp_path_factory.mktemp("loras")
    kohya = write_kohya_lora(d / "pastel_style.safetensors", c.unet, c.text_encoder, rank=4, alpha=2.0, seed=5)
    peft = write_peft_lora(d / "peft_style.safetensors", c.unet, c.text_encoder, rank=4, seed=6)
    return kohya, peft


def _reference(tiny, req: GenerateRequest, path, weight: float) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    from engine.networks.sd15 import load_sd15
    from engine.pipeline.schedulers import make_scheduler

    c = load_sd15(tiny / "sd15")
    ref = StableDiffusionPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        scheduler=make_scheduler(req.scheduler, c.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="style")
    ref.set_adapters(["style"], adapter_weights=[weight])
    return ref(
        req.prompt, negative_prompt=req.negative_prompt, num_inference_steps=req.steps, guidance_scale=req.guidance,
        height=req.height, width=req.width, generator=torch.Generator().manual_seed(req.seed), output_type="np",
    ).images[0]


@pytest.mark.parametrize("which", ["kohya", "peft"])
def test_scale_zero_equals_diffusers_load_lora_weights(pipe, tiny, lora_files, which):
    path = lora_files[0] if which == "kohya" else lora_files[1]
    req = GenerateRequest(prompt="a portrait photo", seed=3, steps=4, scale=0.0, wplus=tiny_wplus(1),
                          loras=(LoraSpec(str(path), 0.8),), **SMALL)
    ours, _, _ = pipe.render_float(req)
    ref = _reference(tiny, req, path, 0.8)
    assert np.abs(ours[0] - ref).max() * 255 <= 1.0
    plain, _, _ = pipe.render_float(req.replace(loras=()))
    assert np.abs(plain[0] - ours[0]).max() > 1e-3  # the LoRA really acts


def test_removing_a_lora_restores_the_weights_bit_for_bit(pipe, lora_files):
    unet = pipe.runners.components.unet
    te = pipe.runners.components.text_encoder
    pipe.runners.set_loras(())
    before = [p.clone() for p in [*unet.parameters(), *te.parameters()]]
    req = GenerateRequest(seed=2, steps=2, wplus=tiny_wplus(2), **SMALL)
    plain = pipe.render(req)
    pipe.render(req.replace(loras=(LoraSpec(str(lora_files[0]), 1.0, 0.3),)))
    after = pipe.render(req)
    assert np.array_equal(plain.images[0], after.images[0])
    assert all(torch.equal(a, b) for a, b in zip(before, [*unet.parameters(), *te.parameters()]))


def test_text_and_unet_weights_act_separately_and_key_the_caches(pipe, lora_files):
    path = str(lora_files[0])
    req = GenerateRequest(seed=8, steps=6, wplus=tiny_wplus(3), start_ratio=40.0, **SMALL)
    pipe.clear_caches()
    unet_only = pipe.render(req.replace(loras=(LoraSpec(path, 1.0, 0.0),)))
    text_only = pipe.render(req.replace(loras=(LoraSpec(path, 0.0, 1.0),)))
    both = pipe.render(req.replace(loras=(LoraSpec(path, 1.0, 1.0),)))
    imgs = [unet_only.images[0], text_only.images[0], both.images[0]]
    assert all(not np.array_equal(a, b) for i, a in enumerate(imgs) for b in imgs[i + 1:])
    assert both.timings["steps_cached"] == 0  # another LoRA set: nothing cached applies
    again = pipe.render(req.replace(loras=(LoraSpec(path, 1.0, 1.0),), wplus=tiny_wplus(4)))
    assert again.timings["steps_cached"] == 3
    assert both.model_hashes["lora:pastel_style"] == again.model_hashes["lora:pastel_style"]


def test_unfused_application_gives_the_same_unet_output(pipe, lora_files):
    from engine.networks.lora import LoraPatcher

    spec = (LoraSpec(str(lora_files[0]), 0.7, 0.5),)
    pipe.runners.set_loras(())
    unet, te = pipe.runners.components.unet, pipe.runners.components.text_encoder
    patcher = LoraPatcher(unet, te)
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 81, 768, generator=torch.Generator().manual_seed(1))  # with the 4 W+ tokens
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        plain = unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]
    outs = []
    for fused in (True, False):
        patcher.apply(spec, fused=fused)
        with torch.no_grad():
            outs.append(unet(sample, t, encoder_hidden_states=text, return_dict=False)[0])
        patcher.clear()
    assert (outs[0] - outs[1]).abs().max() <= 1e-5
    assert (outs[0] - plain).abs().max() > 1e-3
    with torch.no_grad():
        assert torch.equal(unet(sample, t, encoder_hidden_states=text, return_dict=False)[0], plain)


def test_lora_that_matches_nothing_is_refused_with_the_count(pipe, tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "ldm_named.safetensors"
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(32, 4),
               "lora_unet_nonexistent_layer.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_nonexistent_layer.lora_up.weight": torch.zeros(32, 4)}, str(p))
    req = GenerateRequest(steps=1, loras=(LoraSpec(str(p)),), **SMALL)
    with pytest.raises(InvalidInput, match=r"0 of 2 matched"):
        pipe.render(req)


@pytest.mark.parametrize(("keys", "family"), [
    ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
      "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (768, 4)}, "SDXL"),
    ({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (640, 4)}, "SDXL"),
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 1024),
      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4)}, "SD 2.x"),
])
def test_sdxl_and_sd2_loras_are_refused_by_name(tmp_path, keys, family):
    from safetensors.torch import save_file

    from engine.networks.lora import read_lora

    p = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(p))
    with pytest.raises(WrongModelFamily, match=family):
        read_lora(p)


def test_missing_lora_is_named(pipe, tmp_path):
    req = GenerateRequest(steps=1, loras=(LoraSpec(str(tmp_path / "gone.safetensors")),), **SMALL)
    with pytest.raises(ModelMissing, match=r"gone\.safetensors"):
        pipe.render(req)


def test_lora_passed_as_model_hints_at_lora(lora_files):
    from engine.networks.sd15 import load_sd15

    with pytest.raises(WrongModelFamily) as info:
        load_sd15(lora_files[0])
    assert "LoRA" in info.value.user_message
    assert "--lora" in (info.value.hint or "")
