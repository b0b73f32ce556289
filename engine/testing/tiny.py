"""Tiny REAL SD1.5-shaped components for tests, the self-test, the GUI test and benches.

Everything is built in code with fixed seeds (no downloads): a diffusers folder whose UNet keeps the
768-wide cross-attention (the W+ tokens and CLIP embeddings are 768 wide), a tiny AutoencoderKL with the
×8 spatial factor, a 2-layer CLIPTextModel (768 wide, full CLIP vocabulary so the real tokenizer's ids fit),
the real CLIP tokenizer from resources, and a W+ adapter in the official `.bin` layout.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

TINY_SEED = 20261127
TINY_IMAGE = 64  # pixels; latents 8×8

TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [16, 16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": TINY_IMAGE,
    "scaling_factor": 0.18215,
}
TINY_CLIP_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


def build_tiny_modules(seed: int = TINY_SEED) -> tuple[Any, Any, Any]:
    """(unet, vae, text_encoder) tiny modules with deterministic weights, float32, eval mode."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # diffusers' config-registered __init__ hides the nn.Module type from mypy
        unet: Any = UNet2DConditionModel(**TINY_UNET_CONFIG)
        torch.manual_seed(seed + 1)
        vae: Any = AutoencoderKL(**TINY_VAE_CONFIG)
        # transformers' own init of the 49408×768 embedding takes seconds on a busy CPU: build on the
        # meta device and fill with one seeded draw per tensor instead.
        with torch.device("meta"):
            clip = CLIPTextModel(CLIPTextConfig(**TINY_CLIP_CONFIG))
        clip = clip.to_empty(device="cpu")
        gen = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            for name, p in clip.named_parameters():
                if p.ndim == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                elif "layer_norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
            emb = clip.get_submodule("text_model.embeddings" if hasattr(clip, "text_model") else "embeddings")
            emb.register_buffer("position_ids", torch.arange(77).expand((1, -1)), persistent=False)
        # Default inits give the tiny UNet a near-zero output; a larger conv_out makes sampling
        # visibly depend on every step (tests of schedules and caches must be able to fail).
        with torch.no_grad():
            unet.conv_out.weight.normal_(0.0, 0.05)
    return unet.eval(), vae.eval(), clip.eval()


def write_tiny_sd15(folder: str | os.PathLike[str], seed: int = TINY_SEED) -> Path:
    """Write a tiny SD1.5-shaped diffusers folder (unet, vae, text_encoder, tokenizer, scheduler).

    Returns:
        The folder, loadable with `engine.networks.sd15.load_sd15`.
    """
    from engine.networks.sd15 import default_config_dir

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    unet, vae, clip = build_tiny_modules(seed)
    unet.save_pretrained(str(out / "unet"))
    vae.save_pretrained(str(out / "vae"))
    clip.save_pretrained(str(out / "text_encoder"))
    src = default_config_dir()
    shutil.copytree(src / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    shutil.copytree(src / "scheduler", out / "scheduler", dirs_exist_ok=True)
    shutil.copy(src / "model_index.json", out / "model_index.json")
    return out


def write_tiny_adapter(path: str | os.PathLike[str], unet: Any, seed: int = TINY_SEED + 10, fmt: str = "bin") -> Path:
    """Write a W+ adapter for `unet` in the official layout (`fmt="bin"`) or our safetensors layout.

    Weights are deterministic, scaled 1/sqrt(fan_in) so the W+ branch has a visible, finite effect.
    """
    import torch

    from engine.networks.wplus import WProj, expected_adapter_shapes

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wproj = WProj(unet.config.cross_attention_dim)
        with torch.no_grad():
            wproj.norm.weight.normal_(1.0, 0.1)
            wproj.norm.bias.normal_(0.0, 0.1)
        adapter = {
            k: torch.randn(shape) / (shape[1] ** 0.5) for k, shape in expected_adapter_shapes(unet).items()
        }
    w_proj = {k: v.detach().clone() for k, v in wproj.state_dict().items()}
    if fmt == "bin":
        torch.save({"w_proj": w_proj, "wplus_adapter": adapter}, str(p))
    else:
        from safetensors.torch import save_file

        flat = {f"w_proj.{k}": v for k, v in w_proj.items()}
        flat.update({f"wplus_adapter.{k}": v.contiguous() for k, v in adapter.items()})
        save_file(flat, str(p), metadata={"wplus_layout": "wplus_adapter"})
    return p


def tiny_wplus(seed: int = 0):
    """A W+ code shaped like e4e's output (1×18×512 float32, std ≈ 0.5)."""
    import numpy as np

    return (0.5 * np.random.default_rng(seed).standard_normal((1, 18, 512))).astype(np.float32)


def write_tiny_models(models_dir: str | os.PathLike[str]) -> Path:
    """Fill a models folder with the tiny SD1.5 (`sd15/`) and adapter (`wplus_adapter.bin`)."""
    from diffusers import UNet2DConditionModel

    root = Path(models_dir)
    sd = write_tiny_sd15(root / "sd15")
    unet = UNet2DConditionModel.from_pretrained(str(sd / "unet"), local_files_only=True)
    write_tiny_adapter(root / "wplus_adapter.bin", unet)
    return root


def tiny_config(models_dir: str | os.PathLike[str]):
    """An EngineConfig (CPU, float32, torch backend) for a folder made by `write_tiny_models`."""
    from engine.config import EngineConfig

    root = Path(models_dir)
    return EngineConfig(models_dir=root, device="cpu", dtype="float32", backend="torch",
                        sd_model=str(root / "sd15"), adapter=str(root / "wplus_adapter.bin"))


def tiny_session(tmpdir: str | os.PathLike[str]):
    """A Session on tiny models written into `tmpdir` (renders 64×64 images in well under a second per step).

    Only generation (render) is tiny; face encoding and previews need their own models.
    """
    from engine.session import Session

    root = Path(tmpdir) / "models"
    if not (root / "wplus_adapter.bin").is_file():
        write_tiny_models(root)
    return Session(tiny_config(root))


# -- the LDM single-file layout (the inverse of diffusers' conversion), for single-file tests ----------


def _unet_to_ldm(state: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    lpb = cfg["layers_per_block"]
    has_attn_up = ["CrossAttn" in t for t in cfg["up_block_types"]]
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, v in state.items():
        parts = key.split(".")
        new = None
        for d, ldm in fixed.items():
            if key.startswith(d + "."):
                new = ldm + key[len(d):]
        if parts[0] == "down_blocks":
            i = int(parts[1])
            if parts[2] == "resnets":
                j = int(parts[3])
                new = f"input_blocks.{1 + i * (lpb + 1) + j}.0." + ".".join([res.get(parts[4], parts[4]), *parts[5:]])
            elif parts[2] == "attentions":
                j = int(parts[3])
                new = f"input_blocks.{1 + i * (lpb + 1) + j}.1." + ".".join(parts[4:])
            elif parts[2] == "downsamplers":
                new = f"input_blocks.{(i + 1) * (lpb + 1)}.0.op." + ".".join(parts[5:])
        elif parts[0] == "mid_block":
            j = int(parts[2])
            idx = 0 if parts[1] == "resnets" and j == 0 else 1 if parts[1] == "attentions" else 2
            rest = parts[3:]
            if parts[1] == "resnets":
                rest = [res.get(rest[0], rest[0]), *rest[1:]]
            new = f"middle_block.{idx}." + ".".join(rest)
        elif parts[0] == "up_blocks":
            i = int(parts[1])
            if parts[2] == "resnets":
                j = int(parts[3])
                new = f"output_blocks.{i * (lpb + 1) + j}.0." + ".".join([res.get(parts[4], parts[4]), *parts[5:]])
            elif parts[2] == "attentions":
                j = int(parts[3])
                new = f"output_blocks.{i * (lpb + 1) + j}.1." + ".".join(parts[4:])
            elif parts[2] == "upsamplers":
                new = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn_up[i] else 1}.conv." + ".".join(parts[5:])
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = v
    return out


def _vae_to_ldm(state: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    n = len(cfg["block_out_channels"])
    res = {"conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out = {}
    for key, v in state.items():
        parts = key.split(".")
        coder = parts[0]
        if coder in ("quant_conv", "post_quant_conv") or parts[1] in ("conv_in", "conv_out"):
            new = key
        elif parts[1] == "conv_norm_out":
            new = f"{coder}.norm_out." + ".".join(parts[2:])
        elif parts[1] in ("down_blocks", "up_blocks"):
            i = int(parts[2])
            blk = f"{coder}.down.{i}" if coder == "encoder" else f"{coder}.up.{n - 1 - i}"
            if parts[3] == "resnets":
                new = f"{blk}.block.{parts[4]}." + ".".join([res.get(parts[5], parts[5]), *parts[6:]])
            else:  # downsamplers.0.conv / upsamplers.0.conv
                new = f"{blk}.{'downsample' if coder == 'encoder' else 'upsample'}.conv." + ".".join(parts[6:])
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                new = f"{coder}.mid.block_{int(parts[3]) + 1}." + ".".join([res.get(parts[4], parts[4]), *parts[5:]])
            else:
                name = attn[parts[4]]
                tail = parts[6:] if parts[4] == "to_out" else parts[5:]
                new = f"{coder}.mid.attn_1.{name}." + ".".join(tail)
                if v.ndim == 2:  # LDM stores the VAE attention projections as 1×1 convolutions
                    v = v[:, :, None, None]
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
        out["first_stage_model." + new] = v
    return out


def write_ldm_single_file(folder: str | os.PathLike[str], path: str | os.PathLike[str], *,
                          include_vae: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write a diffusers SD folder as one LDM-layout `.safetensors` (as A1111/ComfyUI users keep them).

    `extra` adds or replaces tensors (tests build other families' characteristic keys with it).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    src = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(str(src / "unet"), local_files_only=True)
    state = _unet_to_ldm(unet.state_dict(), json.loads((src / "unet" / "config.json").read_text()))
    if include_vae:
        vae = AutoencoderKL.from_pretrained(str(src / "vae"), local_files_only=True)
        state.update(_vae_to_ldm(vae.state_dict(), json.loads((src / "vae" / "config.json").read_text())))
    clip = CLIPTextModel.from_pretrained(str(src / "text_encoder"), local_files_only=True)
    # real files use `cond_stage_model.transformer.text_model.*` (transformers 5 drops `text_model.` in memory)
    state.update({f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v
                  for k, v in clip.state_dict().items()})
    state.update(extra or {})
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(p))
    return p


def cached_tiny_models(base: str | os.PathLike[str]) -> Path:
    """`write_tiny_models` into `base/tiny-models` once; later calls reuse it (a marker is written last)."""
    root = Path(base) / "tiny-models"
    marker = root / ".complete"
    if not marker.is_file():
        if root.exists():
            shutil.rmtree(root)
        write_tiny_models(root)
        marker.write_text("ok", encoding="utf-8")
    return root
