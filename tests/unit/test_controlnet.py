"""ControlNet on tiny real models: equal to diffusers' ControlNet pipeline, never sees the W+ tokens, files, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.api import ControlSpec, GenerateRequest, Scheduler
from engine.errors import ModelMissing, WrongModelFamily
from engine.pipeline.generate import WPlusPipeline
from engine.testing.tiny import tiny_wplus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = {"width": 64, "height": 64}


@pytest.fixture(scope="module")
def pipe(tiny):
    return WPlusPipeline.from_files(tiny / "sd15", tiny / "wplus_adapter.bin", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def controlnet_files(tiny, tmp_path_factory):
    """The same seeded ControlNet as an A1111 single file and as a diffusers folder, and the module itself."""
    from diffusers import UNet2DConditionModel

    from engine.testing.controls import build_controlnet, write_a1111_controlnet

    unet = UNet2DConditionModel.from_pretrained(str(tiny / "sd15" / "unet"), local_files_only=True)
    cn = build_controlnet(unet)
    d = tmp_path_factory.mktemp("controlnets")
    single = write_a1111_controlnet(d / "control_v11p_sd15_openpose.safetensors", cn)
    folder = d / "control_tiny_diffusers"
    cn.save_pretrained(str(folder))
    return single, folder, cn


def _control_image(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    for _ in range(6):  # a few coloured sticks, like a pose skeleton
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        img[y:y + 6, x:x + rng.integers(2, 8)] = rng.integers(60, 255, 3)
    return img


def _reference(tiny, controlnet, req: GenerateRequest, image: np.ndarray, spec: ControlSpec) -> np.ndarray:
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    from engine.networks.sd15 import load_sd15
    from engine.pipeline.schedulers import make_scheduler

    c = load_sd15(tiny / "sd15")
    if req.freeu:
        c.unet.enable_freeu(s1=0.6, s2=0.4, b1=1.1, b2=1.2)
    ref = StableDiffusionControlNetPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, controlnet=controlnet,
        scheduler=make_scheduler(req.scheduler, c.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    ref.set_progress_bar_config(disable=True)
    return ref(
        req.prompt, image=Image.fromarray(image), negative_prompt=req.negative_prompt,
        num_inference_steps=req.steps, guidance_scale=req.guidance, height=req.height, width=req.width,
        generator=torch.Generator().manual_seed(req.seed), output_type="np",
        controlnet_conditioning_scale=spec.scale, control_guidance_start=spec.start, control_guidance_end=spec.end,
    ).images[0]


@pytest.mark.parametrize(("scheduler", "start", "end", "scale", "freeu"), [
    (Scheduler.EULER, 0.0, 1.0, 1.0, False),
    (Scheduler.DPMPP_2M_KARRAS, 0.25, 0.75, 0.6, False),
    (Scheduler.EULER, 0.0, 1.0, 0.8, True),
])
def test_scale_zero_equals_diffusers_controlnet_pipeline(pipe, tiny, controlnet_files, scheduler, start, end, scale,
                                                         freeu):
    single, _folder, cn = controlnet_files
    image = _control_image(128, 128)  # resized to 64×64 as diffusers does
    spec = ControlSpec(str(single), image, scale=scale, start=start, end=end)
    req = GenerateRequest(prompt="a portrait photo", seed=5, steps=4, scheduler=scheduler, scale=0.0,
                          wplus=tiny_wplus(2), controls=(spec,), freeu=freeu, **SMALL)
    pipe.clear_caches()
    ours, _, _ = pipe.render_float(req)
    ref = _reference(tiny, cn, req, image, spec)
    assert np.abs(ours[0] - ref).max() * 255 <= 1.0
    assert np.abs(ours[0] - ref).max() <= 1e-4  # in fact the same computation
    plain, _, _ = pipe.render_float(req.replace(controls=()))
    assert np.abs(plain[0] - ours[0]).max() > 1e-3  # the ControlNet really acts


def test_folder_and_single_file_give_the_same_image(pipe, controlnet_files):
    single, folder, _ = controlnet_files
    image = _control_image(seed=3)
    req = GenerateRequest(seed=2, steps=3, wplus=tiny_wplus(1), start_ratio=0.0, **SMALL)
    a, _, _ = pipe.render_float(req.replace(controls=(ControlSpec(str(single), image),)))
    b, _, _ = pipe.render_float(req.replace(controls=(ControlSpec(str(folder), image),)))
    assert np.array_equal(a[0], b[0])


def test_controlnet_never_receives_the_wplus_tokens(pipe, controlnet_files):
    single, _folder, _ = controlnet_files
    runner = pipe.runners.controlnet(str(single))
    seen: list[torch.Tensor] = []
    handle = runner.module.controlnet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    unet_seen: list[int] = []
    h2 = pipe.runners.components.unet.register_forward_pre_hook(
        lambda m, args, kwargs: unet_seen.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True)
    try:
        req = GenerateRequest(prompt="a face", seed=1, steps=3, wplus=tiny_wplus(4), scale=1.0, start_ratio=0.0,
                              controls=(ControlSpec(str(single), _control_image()),), **SMALL)
        pipe.clear_caches()
        pipe.render_float(req)
    finally:
        handle.remove()
        h2.remove()
    text = torch.cat([pipe.encode_text(req.negative_prompt)[0], pipe.encode_text(req.prompt)[0]])
    assert len(seen) == 3
    assert unet_seen == [81, 81, 81]
    for hidden in seen:
        assert hidden.shape == (2, 77, 768)
        assert torch.equal(hidden, text)  # exactly the text tokens: nothing of the identity
    # and the ControlNet's processors are diffusers' standard ones
    from engine.networks.wplus import WPlusAttnProcessor

    assert not any(isinstance(p, WPlusAttnProcessor) for p in runner.module.controlnet.attn_processors.values())


def test_identity_still_acts_with_a_controlnet_and_the_step_cache_resumes(pipe, controlnet_files):
    single, _folder, _ = controlnet_files
    spec = ControlSpec(str(single), _control_image(seed=7), scale=0.8)
    req = GenerateRequest(seed=9, steps=10, wplus=tiny_wplus(5), scale=1.0, start_ratio=30.0, controls=(spec,), **SMALL)
    pipe.clear_caches()
    first = pipe.render(req)
    assert first.timings["steps_cached"] == 0
    other = pipe.render(req.replace(wplus=tiny_wplus(6)))
    assert other.timings["steps_cached"] == 4  # steps 0..3 are identity-free and come from the cache
    pipe.clear_caches()
    cold = pipe.render(req.replace(wplus=tiny_wplus(6)))
    assert np.array_equal(cold.images[0], other.images[0])
    assert not np.array_equal(first.images[0], other.images[0])
    # a different control image, scale or range is another cache entry
    for changed in (ControlSpec(str(single), _control_image(seed=8), scale=0.8),
                    ControlSpec(str(single), spec.image, scale=0.5),
                    ControlSpec(str(single), spec.image, scale=0.8, end=0.5)):
        r = pipe.render(req.replace(controls=(changed,)))
        assert r.timings["steps_cached"] == 0


def test_two_controlnets_sum_their_residuals(pipe, controlnet_files):
    single, folder, _ = controlnet_files
    img = _control_image(seed=11)
    req = GenerateRequest(seed=4, steps=2, wplus=None, **SMALL)
    one, _, _ = pipe.render_float(req.replace(controls=(ControlSpec(str(single), img, scale=1.0),)))
    two, _, _ = pipe.render_float(req.replace(controls=(ControlSpec(str(single), img, scale=0.5),
                                                        ControlSpec(str(folder), img, scale=0.5))))
    assert np.abs(one[0] - two[0]).max() <= 1e-5


def test_other_aspect_ratio_is_scaled_to_cover_and_centre_cropped():
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    from engine.controls.conditioning import control_tensor

    square = _control_image(96, 96, seed=2)
    proc = VaeImageProcessor(do_convert_rgb=True, do_normalize=False)
    same = control_tensor(square, 64, 64)
    assert np.array_equal(same, proc.preprocess(Image.fromarray(square), height=64, width=64).numpy())
    wide = np.zeros((64, 128, 3), np.uint8)
    wide[:, 32:96] = 200  # the centre half is bright
    wide[:, :32] = 10
    wide[:, 96:] = 10
    out = control_tensor(wide, 64, 64)  # square output: the centre 64×64 of the 128-wide image, not squeezed
    assert out.shape == (1, 3, 64, 64)
    assert out.min() > 0.7  # nothing of the dark side bands survives
    tall = control_tensor(wide, 64, 128)
    assert tall.shape == (1, 3, 128, 64)


def test_missing_controlnet_is_named(pipe, tmp_path):
    missing = tmp_path / "control_v11p_sd15_canny.safetensors"
    req = GenerateRequest(steps=1, controls=(ControlSpec(str(missing), _control_image()),), **SMALL)
    with pytest.raises(ModelMissing, match=r"control_v11p_sd15_canny\.safetensors"):
        pipe.render(req)


@pytest.mark.parametrize(("cross", "extra", "family"), [
    (2048, {"control_model.label_emb.0.0.weight": (1280, 2816)}, "SDXL"),
    (1024, {}, "SD 2.x"),
])
def test_sdxl_and_sd2_controlnets_are_refused_by_name(tmp_path, cross, extra, family):
    from safetensors.torch import save_file

    from engine.networks.controlnet import load_controlnet

    state = {
        "control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, cross),
        **{k: torch.zeros(s) for k, s in extra.items()},
    }
    p = tmp_path / "controlnet_xl.safetensors"
    save_file(state, str(p))
    with pytest.raises(WrongModelFamily, match=family):
        load_controlnet(p)
    folder = tmp_path / "folder"
    folder.mkdir()
    import json

    cfg = {"_class_name": "ControlNetModel", "cross_attention_dim": cross}
    if cross == 2048:
        cfg["addition_embed_type"] = "text_time"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WrongModelFamily, match=family):
        load_controlnet(folder)


def test_a_full_checkpoint_is_not_a_controlnet(tiny, tmp_path):
    from engine.networks.controlnet import load_controlnet
    from engine.testing.tiny import write_ldm_single_file

    p = write_ldm_single_file(tiny / "sd15", tmp_path / "model.safetensors", include_vae=False)
    with pytest.raises(WrongModelFamily, match="full Stable Diffusion checkpoint"):
        load_controlnet(p)


def test_full_size_a1111_layout_keys_and_config_from_shapes():
    """At SD1.5's real architecture (meta tensors): the key names of control_v11p_sd15_*.safetensors, and the
    config our loader derives from their shapes."""
    import json

    from diffusers import ControlNetModel, UNet2DConditionModel

    from engine.networks.controlnet import config_from_ldm_shapes, convert_ldm_controlnet
    from engine.networks.sd15 import default_config_dir
    from engine.testing.controls import controlnet_to_a1111

    base = json.loads((default_config_dir() / "unet" / "config.json").read_text())
    with torch.device("meta"):
        cn = ControlNetModel.from_unet(UNet2DConditionModel.from_config(base), load_weights_from_unet=False)
    ldm = controlnet_to_a1111(cn.state_dict(), dict(cn.config))
    for key in ("control_model.input_hint_block.0.weight", "control_model.input_hint_block.14.weight",
                "control_model.zero_convs.11.0.weight", "control_model.middle_block_out.0.weight",
                "control_model.input_blocks.11.0.out_layers.3.weight", "control_model.time_embed.2.weight",
                "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "control_model.middle_block.1.proj_in.weight", "control_model.input_blocks.9.0.op.weight"):
        assert key in ldm, key
    assert len(ldm) == len(cn.state_dict())
    core = {k.removeprefix("control_model."): tuple(v.shape) for k, v in ldm.items()}
    cfg = config_from_ldm_shapes(core, base)
    assert cfg["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["layers_per_block"] == 2
    assert cfg["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert cfg["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
    assert (cfg["cross_attention_dim"], cfg["conditioning_channels"], cfg["use_linear_projection"]) == (768, 3, False)
    back = convert_ldm_controlnet({k.removeprefix("control_model."): v for k, v in ldm.items()}, cfg)
    assert set(back) == set(cn.state_dict())
