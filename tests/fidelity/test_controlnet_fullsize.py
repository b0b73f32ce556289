"""Opt-in (`slow`): full-size SD1.5 + ControlNet + LoRA with rule-wbn-1 weights against diffusers' pipelines.

The same checks as tests/unit/test_controlnet.py and test_lora.py at the real architecture: a 12-residual
ControlNet written as an A1111 single file and read back through our converter, a kohya LoRA over every
kohya target (LoCon included), W+ scale 0 → equal to `StableDiffusionControlNetPipeline` and to
`load_lora_weights` + adapter weights within 1 grey level. 64×64 px, 2 steps: the architecture is what
matters, not the size. Needs ≈ 14 GB RAM; run under the big-memory lock:
`flock /tmp/bigmem.lock env WPLUS_SLOW=1 pytest tests/fidelity/test_controlnet_fullsize.py -q`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.api import ControlSpec, GenerateRequest, LoraSpec
from engine.testing.tiny import tiny_wplus

pytestmark = pytest.mark.slow


def _fill(module):
    from engine.testing.official_files import rule_tensors

    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(rule_tensors(shapes), strict=True, assign=True)
    return module.eval()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.networks.sd15 import SD15Components, default_config_dir, load_tokenizer
    from engine.networks.wplus import WProj, install_wplus_processors
    from engine.testing.controls import write_a1111_controlnet, write_kohya_lora

    cfg = default_config_dir()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((cfg / "unet" / "config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((cfg / "vae" / "config.json").read_text()))
        te_cfg = json.loads((cfg / "text_encoder" / "config.json").read_text())
        clip = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in te_cfg.items() if not k.startswith("_")}))
    unet, vae, clip = _fill(unet), _fill(vae), _fill(clip)
    emb = clip.get_submodule("text_model.embeddings" if hasattr(clip, "text_model") else "embeddings")
    emb.register_buffer("position_ids", torch.arange(77).expand((1, -1)), persistent=False)
    d = tmp_path_factory.mktemp("fullsize-controls")
    with torch.device("meta"):
        cn = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    cn = _fill(cn)
    cn_path = write_a1111_controlnet(d / "control_v11p_sd15_openpose.safetensors", cn)
    lora = write_kohya_lora(d / "portrait_style.safetensors", unet, clip, rank=8, alpha=4.0, std=0.5)
    plain = dict(unet.attn_processors)
    install_wplus_processors(unet)
    wproj = _fill(WProj())
    comps = SD15Components(unet=unet, vae=vae, text_encoder=clip, tokenizer=load_tokenizer(),
                           scheduler_config=json.loads((cfg / "scheduler" / "scheduler_config.json").read_text()))
    return comps, wproj, cn, cn_path, lora, plain


def _pose() -> np.ndarray:
    img = np.zeros((64, 64, 3), np.uint8)
    img[6:58, 30:34] = (255, 0, 85)
    img[18:22, 6:58] = (0, 255, 170)
    return img


def _diffusers(full, req: GenerateRequest, *, control=None, lora=None) -> np.ndarray:
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline
    from PIL import Image

    from engine.pipeline.schedulers import make_scheduler

    comps, _wproj, cn, _cn_path, _lora, plain = full
    wplus = dict(comps.unet.attn_processors)
    comps.unet.set_attn_processor(dict(plain))  # (set_attn_processor empties the dict it is given) diffusers' stock processors on the same weights
    try:
        kw = {"vae": comps.vae, "text_encoder": comps.text_encoder, "tokenizer": comps.tokenizer, "unet": comps.unet,
              "scheduler": make_scheduler(req.scheduler, comps.scheduler_config), "safety_checker": None,
              "feature_extractor": None, "requires_safety_checker": False}
        extra = {}
        if control is not None:
            ref = StableDiffusionControlNetPipeline(controlnet=cn, **kw)
            extra = {"image": Image.fromarray(control.image), "controlnet_conditioning_scale": control.scale}
        else:
            ref = StableDiffusionPipeline(**kw)
        ref.set_progress_bar_config(disable=True)
        if lora is not None:
            ref.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="style")
            ref.set_adapters(["style"], adapter_weights=[0.7])
        try:
            return ref(req.prompt, negative_prompt=req.negative_prompt, num_inference_steps=req.steps,
                       guidance_scale=req.guidance, height=req.height, width=req.width,
                       generator=torch.Generator().manual_seed(req.seed), output_type="np", **extra).images[0]
        finally:
            if lora is not None:
                ref.unload_lora_weights()
    finally:
        comps.unet.set_attn_processor(dict(wplus))


def test_fullsize_controlnet_and_lora_equal_diffusers(full):
    from engine.pipeline.generate import WPlusPipeline

    comps, wproj, _cn, cn_path, lora, _plain = full
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = WPlusPipeline.from_components(comps, wproj, device="cpu", dtype=torch.float32, step_cache_size=0)
    spec = ControlSpec(str(cn_path), _pose(), scale=0.9)
    req = GenerateRequest(prompt="a portrait photo", seed=3, steps=2, width=64, height=64, scale=0.0,
                          wplus=tiny_wplus(1))
    ours, _, _ = pipe.render_float(req.replace(controls=(spec,)))
    assert np.abs(ours[0] - _diffusers(full, req, control=spec)).max() * 255 <= 1.0
    ours_lora, _, _ = pipe.render_float(req.replace(loras=(LoraSpec(str(lora), 0.7),)))
    pipe.runners.set_loras(())
    assert np.abs(ours_lora[0] - _diffusers(full, req, lora=lora)).max() * 255 <= 1.0
    assert np.abs(ours_lora[0] - ours[0]).max() > 1e-3
