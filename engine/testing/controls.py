"""ControlNet and LoRA files in the layouts artists have, made from seeded weights (never downloaded).

* `build_controlnet`: a ControlNet shaped like a UNet (`ControlNetModel.from_unet`) with seeded, NON-zero
  zero-convolutions (a freshly initialised ControlNet outputs zeros, and a test of it could not fail);
* `controlnet_to_a1111`: the inverse of `engine.networks.controlnet.convert_ldm_controlnet` — diffusers keys
  → the `control_model.*` names of `control_v11p_sd15_*.safetensors`;
* `write_kohya_lora` / `write_peft_lora`: a LoRA for a UNet and text encoder in kohya's
  `lora_unet_*`/`lora_te_*` layout (with `alpha`, optional LoCon convolutions) or diffusers/PEFT's
  `unet.*.lora_A/lora_B` layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# kohya's SD1.5 LoRA targets: the transformer blocks' projections and the CLIP attention/MLP layers;
# LoCon adds the ResNet convolutions.
UNET_LINEAR_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                       "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
LOCON_TARGETS = ("conv1", "conv2")


def build_controlnet(unet: Any, seed: int = 31) -> Any:
    """A ControlNet with `unet`'s architecture and seeded weights (zero convolutions non-zero), float32."""
    import torch
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cn = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        # The UNet's own weights where the ControlNet shares its layout (not the W+ processors' weights,
        # which from_unet's strict copy would trip over when the adapter is installed).
        own = cn.state_dict()
        cn.load_state_dict({k: v for k, v in unet.state_dict().items() if k in own}, strict=False)
        with torch.no_grad():
            for name, p in cn.named_parameters():
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                    p.normal_(0.0, 0.2 if p.ndim > 1 else 0.05)
    return cn.eval()


def controlnet_to_a1111(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers ControlNetModel keys → A1111's `control_model.*` single-file names."""
    from engine.testing.tiny import _unet_to_ldm

    n_hint = len(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256))
    unet_like: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "controlnet_cond_embedding":
            if parts[1] == "conv_in":
                idx = 0
            elif parts[1] == "conv_out":
                idx = 2 * (2 * (n_hint - 1) + 1)
            else:
                idx = 2 * (int(parts[2]) + 1)
            out[f"input_hint_block.{idx}.{parts[-1]}"] = v
        elif parts[0] == "controlnet_down_blocks":
            out[f"zero_convs.{parts[1]}.0.{parts[2]}"] = v
        elif parts[0] == "controlnet_mid_block":
            out[f"middle_block_out.0.{parts[1]}"] = v
        else:
            unet_like[k] = v
    for k, v in _unet_to_ldm(unet_like, {**config, "up_block_types": []}).items():
        out[k.removeprefix("model.diffusion_model.")] = v
    return {"control_model." + k: v for k, v in out.items()}


def write_a1111_controlnet(path: str | os.PathLike[str], controlnet: Any, dtype: Any = None) -> Path:
    """Save `controlnet` as one A1111-layout `.safetensors` (as `control_v11p_sd15_openpose.safetensors`)."""
    from safetensors.torch import save_file

    state = controlnet_to_a1111(controlnet.state_dict(), dict(controlnet.config))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.to(dtype) if dtype else v).contiguous() for k, v in state.items()}, str(p))
    return p


def _text_modules(text_encoder: Any) -> list[tuple[str, Any]]:
    return [(n.removeprefix("text_model."), m) for n, m in text_encoder.named_modules()
            if n.endswith(TEXT_TARGETS)]


def lora_tensors(unet: Any, text_encoder: Any, *, rank: int = 4, alpha: float | None = 2.0, seed: int = 5,
                 locon: bool = True, std: float = 0.2) -> list[tuple[str, str, Any, Any, float | None]]:
    """Seeded (component, dotted module, down, up, alpha) for every kohya target of the two modules."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    rows = []
    mods = [("unet", n, m) for n, m in unet.named_modules()
            if ".processor." not in n and (n.endswith(UNET_LINEAR_TARGETS) or (locon and n.endswith(LOCON_TARGETS)))]
    mods += [("text_encoder", "text_model." + n, m) for n, m in _text_modules(text_encoder)]
    for comp, name, mod in mods:
        w = mod.weight
        if isinstance(mod, nn.Conv2d):
            down = torch.randn((rank, *w.shape[1:]), generator=g) * std / (w[0].numel() ** 0.5)
            up = torch.randn((w.shape[0], rank, 1, 1), generator=g) * std
        else:
            down = torch.randn((rank, w.shape[1]), generator=g) * std / (w.shape[1] ** 0.5)
            up = torch.randn((w.shape[0], rank), generator=g) * std
        rows.append((comp, name, down, up, alpha))
    return rows


def write_kohya_lora(path: str | os.PathLike[str], unet: Any, text_encoder: Any, **kwargs: Any) -> Path:
    """A kohya/A1111 LoRA (`lora_unet_*`, `lora_te_*`, `.alpha`; LoCon convs with `locon=True`)."""
    import torch
    from safetensors.torch import save_file

    state = {}
    for comp, name, down, up, alpha in lora_tensors(unet, text_encoder, **kwargs):
        base = ("lora_unet_" if comp == "unet" else "lora_te_") + name.replace(".", "_")
        state[f"{base}.lora_down.weight"] = down.contiguous()
        state[f"{base}.lora_up.weight"] = up.contiguous()
        if alpha is not None:
            state[f"{base}.alpha"] = torch.tensor(float(alpha))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(p), metadata={"ss_network_module": "networks.lora"})
    return p


def write_peft_lora(path: str | os.PathLike[str], unet: Any, text_encoder: Any, **kwargs: Any) -> Path:
    """A diffusers/PEFT LoRA (`unet.<module>.lora_A.weight` / `lora_B.weight`, `text_encoder.…`), linear only."""
    from safetensors.torch import save_file

    kwargs["locon"] = False
    state = {}
    for comp, name, down, up, _alpha in lora_tensors(unet, text_encoder, **{**kwargs, "alpha": None}):
        state[f"{comp}.{name}.lora_A.weight"] = down.flatten(1).contiguous() if down.ndim == 2 else down.contiguous()
        state[f"{comp}.{name}.lora_B.weight"] = up.contiguous()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(p))
    return p
