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


def _reference(tiny, req: GenerateRequest, path, weight: float, **load_kwargs) -> np.ndarray:
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
    ref.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="style", **load_kwargs)
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


@pytest.mark.parametrize(("names", "count"), [
    # half LDM: input_blocks_1_1 is the tiny UNet's first attention, it has no input block 99
    (("input_blocks_1_1_proj_in", "input_blocks_99_1_proj_in"), "1 of 2"),
    (("nonexistent_layer", "input_blocks_99_1_proj_in"), "0 of 2"),
])
def test_lora_with_layers_the_model_lacks_is_refused_with_the_count(pipe, tmp_path, names, count):
    from safetensors.torch import save_file

    p = tmp_path / "ldm_named.safetensors"
    state = {}
    for n in names:
        state[f"lora_unet_{n}.lora_down.weight"] = torch.zeros(4, 32)
        state[f"lora_unet_{n}.lora_up.weight"] = torch.zeros(32, 4)
    save_file(state, str(p))
    req = GenerateRequest(steps=1, loras=(LoraSpec(str(p)),), **SMALL)
    with pytest.raises(InvalidInput, match=rf"{count} layers matched") as info:
        pipe.render(req)
    assert "input_blocks_99_1_proj_in" in info.value.user_message


@pytest.mark.parametrize(("keys", "family"), [
    ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
      "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (768, 4)}, "SDXL"),
    ({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (640, 4)}, "SDXL"),
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 1024),
      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4)}, "SD 2.x"),
    # an SDXL UNet-only LoRA in LDM names: 640 wide like SD1.5's input_blocks_4_1, but a second transformer block
    ({"lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_down.weight": (4, 640),
      "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_up.weight": (640, 4)}, "SDXL"),
])
def test_sdxl_and_sd2_loras_are_refused_by_name(tmp_path, keys, family):
    from safetensors.torch import save_file

    from engine.networks.lora import read_lora

    p = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(p))
    with pytest.raises(WrongModelFamily, match=family):
        read_lora(p)


@pytest.mark.parametrize(("extra", "kind"), [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale": (1, 32)}, "DoRA"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_out.hada_w1_a": (32, 4)}, "LyCORIS LoHa"),
])
def test_dora_and_lycoris_files_are_refused_by_name(tmp_path, extra, kind):
    """Read as plain LoRAs they would act without their extra factors (another image, silently)."""
    from safetensors.torch import save_file

    from engine.networks.lora import read_lora

    base = "lora_unet_down_blocks_0_attentions_0_proj_in"
    shapes = {f"{base}.lora_down.weight": (4, 32), f"{base}.lora_up.weight": (32, 4), **extra}
    p = tmp_path / "decomposed.safetensors"
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(p))
    with pytest.raises(WrongModelFamily, match=rf"decomposed\.safetensors is a {kind}"):
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


# -- LoRA files with the LDM/SGM UNet's block names (older kohya sd-scripts, SGM trainers) ------------


def _to_ldm(names, config) -> dict[str, str]:
    """The test's inverse: diffusers UNet module paths → LDM module names.

    engine.testing.tiny's single-file writer; that diffusers' own converter undoes it exactly is asserted
    in `test_ldm_names_cover_every_layer_of_the_full_size_sd15_unet`.
    """
    from engine.testing.tiny import _unet_to_ldm

    out = {}
    for n in names:
        (key,) = _unet_to_ldm({n + ".weight": None}, dict(config))
        out[n] = key.removeprefix("model.diffusion_model.").removesuffix(".weight")
    return out


def _rule_rows(unet, text_encoder, rank: int = 4):
    """(kohya prefix + diffusers module path, down, up) for EVERY Linear/Conv2d of the UNet (full LyCORIS
    coverage: attention, ResNet convs, time embedding, shortcuts, down/upsamplers, conv_in/out) and the CLIP
    attention/MLP layers; weights follow a fixed rule (a cosine of the element index)."""
    from torch import nn

    from engine.testing.controls import TEXT_TARGETS

    rows = []
    mods = [("lora_unet_", n, m) for n, m in unet.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and ".processor." not in n]
    mods += [("lora_te_", n if n.startswith("text_model.") else "text_model." + n, m)
             for n, m in text_encoder.named_modules() if n.endswith(TEXT_TARGETS)]
    for k, (prefix, name, mod) in enumerate(mods):
        w = mod.weight
        down_shape = (rank, *w.shape[1:])
        up_shape = (w.shape[0], rank, 1, 1) if w.ndim == 4 else (w.shape[0], rank)

        def rule(shape, phase):
            n = int(np.prod(shape))
            return torch.cos(torch.arange(n, dtype=torch.float32) * 0.37 + phase).reshape(shape)

        down = rule(down_shape, k) * 0.3 / (w[0].numel() ** 0.5)
        up = rule(up_shape, 2 * k + 1) * 0.3
        rows.append((prefix, name, down, up))
    return rows


def _write_rows(path, rows, rename=None):
    from safetensors.torch import save_file

    state = {}
    for prefix, name, down, up in rows:
        if prefix == "lora_unet_" and rename is not None:
            name = rename[name]
        base = prefix + name.replace(".", "_")
        state[f"{base}.lora_down.weight"] = down.contiguous()
        state[f"{base}.lora_up.weight"] = up.contiguous()
        state[f"{base}.alpha"] = torch.tensor(2.0)
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def ldm_pair(tiny, tmp_path_factory):
    """The same rule-weight LoRA saved twice: kohya with diffusers names, and with LDM block names."""
    from engine.networks.sd15 import load_sd15

    c = load_sd15(tiny / "sd15")
    rows = _rule_rows(c.unet, c.text_encoder)
    ldm_names = _to_ldm([name for prefix, name, _d, _u in rows if prefix == "lora_unet_"], c.unet.config)
    d = tmp_path_factory.mktemp("ldm-loras")
    return (_write_rows(d / "style_diffusers.safetensors", rows), _write_rows(d / "style_ldm.safetensors", rows, ldm_names),
            rows, ldm_names)


def test_ldm_named_lora_patches_the_unet_exactly_as_its_diffusers_named_twin(pipe, ldm_pair):
    from engine.networks.lora import LoraPatcher

    diffusers_file, ldm_file, rows, ldm_names = ldm_pair
    # the LDM names really differ, and cover each kind of layer the brief lists
    assert {"input_blocks.1.1.transformer_blocks.0.attn1.to_q", "input_blocks.3.0.in_layers.2",
            "input_blocks.3.0.emb_layers.1", "input_blocks.3.0.out_layers.3", "input_blocks.3.0.skip_connection",
            "input_blocks.2.0.op", "middle_block.0.in_layers.2", "middle_block.1.proj_in",
            "middle_block.2.out_layers.3", "output_blocks.1.1.conv", "output_blocks.2.1.proj_out",
            "input_blocks.0.0", "out.2", "time_embed.0"} <= set(ldm_names.values())
    pipe.runners.set_loras(())
    unet, te = pipe.runners.components.unet, pipe.runners.components.text_encoder
    original = {k: v.clone() for k, v in [*unet.state_dict().items(), *te.state_dict().items()]}
    patcher = LoraPatcher(unet, te)
    states = []
    for path in (diffusers_file, ldm_file):
        patcher.apply((LoraSpec(str(path), 0.9, 0.6),))
        assert len(patcher._originals) == len(rows)  # every layer of the file patched one module of its own
        states.append({k: v.clone() for k, v in [*unet.state_dict().items(), *te.state_dict().items()]})
        patcher.clear()
    assert all(torch.equal(states[0][k], states[1][k]) for k in original)
    changed = [k for k in original if not torch.equal(states[0][k], original[k])]
    assert len(changed) == len(rows)
    assert all(torch.equal(v, original[k]) for k, v in [*unet.state_dict().items(), *te.state_dict().items()])


def test_ldm_names_cover_every_layer_of_the_full_size_sd15_unet():
    """On the meta device (no weights): diffusers' single-file converter undoes the test's inverse on the whole
    SD1.5 UNet, and each LDM name resolves to the module diffusers' converter names."""
    import json

    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from torch import nn

    from engine.networks.lora import module_index
    from engine.networks.sd15 import default_config_dir
    from engine.testing.tiny import _unet_to_ldm

    cfg = json.loads((default_config_dir() / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    names = list(unet.state_dict())
    ldm = _unet_to_ldm({n: torch.tensor([float(i)]) for i, n in enumerate(names)}, cfg)
    by_diffusers = {k: names[int(v.item())] for k, v in convert_ldm_unet_checkpoint(ldm, cfg).items()}
    ldm_of = {names[int(v.item())]: k.removeprefix("model.diffusion_model.") for k, v in ldm.items()}
    assert all(by_diffusers[n] == n for n in names)  # the inverse is exact
    index = module_index(unet, "unet")
    path_of = {id(m): n for n, m in unet.named_modules()}
    layers = [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(layers) > 250
    for n in layers:
        kohya = ldm_of[n + ".weight"].removesuffix(".weight").replace(".", "_")
        assert path_of[id(index[kohya])] == n, kohya
    spots = {"input_blocks_1_1_transformer_blocks_0_attn1_to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
             "input_blocks_4_0_in_layers_2": "down_blocks.1.resnets.0.conv1",
             "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
             "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
             "middle_block_2_emb_layers_1": "mid_block.resnets.1.time_emb_proj",
             "output_blocks_2_1_conv": "up_blocks.0.upsamplers.0.conv",
             "output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
             "output_blocks_8_2_conv": "up_blocks.2.upsamplers.0.conv",
             "output_blocks_11_1_proj_out": "up_blocks.3.attentions.2.proj_out"}
    assert {k: path_of[id(index[k])] for k in spots} == spots
    assert "input_blocks_12_0_op" not in index


def test_ldm_named_lora_equals_diffusers_load_lora_weights_with_its_unet_config(pipe, tiny, ldm_pair, tmp_path):
    """diffusers' SD1.5 loader renumbers LDM block names only when given `unet_config=` (it does not pass it
    itself), and then maps an up block's upsampler without attention (`output_blocks_1_1_conv` here, SD1.5's
    `output_blocks_2_1_conv`) to a nonexistent `attentions` module: that layer is left out of this file."""
    _d, _l, rows, ldm_names = ldm_pair
    skip = {n for n, ldm in ldm_names.items() if ldm.endswith(".1.conv")}
    assert skip == {"up_blocks.0.upsamplers.0.conv"}
    path = _write_rows(tmp_path / "ldm_style.safetensors", [r for r in rows if r[1] not in skip], ldm_names)
    req = GenerateRequest(prompt="a portrait photo", seed=4, steps=4, scale=0.0, wplus=tiny_wplus(1),
                          loras=(LoraSpec(str(path), 0.8),), **SMALL)
    ours, _, _ = pipe.render_float(req)
    from engine.networks.sd15 import load_sd15

    ref = _reference(tiny, req, path, 0.8, unet_config=load_sd15(tiny / "sd15").unet.config)
    assert np.abs(ours[0] - ref).max() * 255 <= 1.0
    plain, _, _ = pipe.render_float(req.replace(loras=()))
    assert np.abs(plain[0] - ours[0]).max() > 1e-3


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_fused_half_precision_lora_keeps_host_backups_and_restores_exactly(tiny, lora_files, device):
    """The copies a fused LoRA keeps to undo itself live in host memory whatever the model's device (a full
    LoCon touches most of the UNet), and putting them back is exact."""
    from engine.networks.lora import LoraPatcher
    from engine.networks.sd15 import load_sd15

    c = load_sd15(tiny / "sd15", dtype=torch.float16)
    unet, te = c.unet.to(device), c.text_encoder.to(device)
    before = {k: v.clone() for k, v in [*unet.state_dict().items(), *te.state_dict().items()]}
    patcher = LoraPatcher(unet, te)
    patcher.apply((LoraSpec(str(lora_files[0]), 1.0, 0.5),))
    assert patcher._originals
    assert all(b.device.type == "cpu" for _m, b in patcher._originals.values())
    assert all(m.weight.device.type == device for m, _b in patcher._originals.values())
    now = dict([*unet.state_dict().items(), *te.state_dict().items()])
    assert sum(not torch.equal(now[k], v) for k, v in before.items()) == len(patcher._originals)
    patcher.clear()
    now = dict([*unet.state_dict().items(), *te.state_dict().items()])
    assert all(torch.equal(now[k], v) for k, v in before.items())
    assert not patcher._originals
