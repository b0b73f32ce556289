"""SD1.5 ControlNets from local files: a diffusers folder or a single A1111-layout `.safetensors`.

Two layouts are accepted, as artists keep them:

* a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`), loaded with
  `ControlNetModel.from_pretrained(..., local_files_only=True)`;
* a single file in the original ControlNet layout (`control_v11p_sd15_openpose.safetensors` and the like:
  `control_model.input_blocks.*`, `control_model.zero_convs.*`, `control_model.input_hint_block.*`,
  `control_model.middle_block_out.*`). Its keys are converted with diffusers' pure key-mapping function and
  its configuration is derived from the tensor shapes on top of the SD1.5 UNet configuration shipped in
  `resources/sd15/unet/` — never from a hub.

SD 2.x and SDXL ControlNets (1024/2048-wide cross-attention, SDXL's added embeddings) and ControlNet-LoRAs
are refused by name. The ControlNet keeps diffusers' standard attention processors and is called with the
77 text tokens only: it never sees the W+ identity tokens (REFERENCE.md §4, our design choice), while its
residuals are added inside the UNet that carries the W+ processors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import ModelCorrupt, ModelMissing, WrongModelFamily

CONTROL_PREFIX = "control_model."
SD15_CROSS_DIM = 768
_HINT = "Use an SD1.5 ControlNet (e.g. control_v11p_sd15_openpose): the W+ adapter works with SD1.5 models only."
_INPUT_BLOCK = re.compile(r"^input_blocks\.(\d+)\.")
_HINT_CONV = re.compile(r"^input_hint_block\.(\d+)\.weight$")


class ControlNetResiduals(nn.Module):
    """The ControlNet component: (sample, timestep, 77 text tokens, control image, scale) → residuals.

    forward returns the down-block residuals (12 for SD1.5) followed by the mid-block residual, each
    already multiplied by `conditioning_scale`, exactly what `UNet2DConditionModel` takes as
    `down_block_additional_residuals` / `mid_block_additional_residual`.
    """

    def __init__(self, controlnet: Any) -> None:
        super().__init__()
        self.controlnet = controlnet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        control_image: torch.Tensor,
        conditioning_scale: torch.Tensor | float,
    ) -> tuple[torch.Tensor, ...]:
        if text_embeds.shape[1] != 77:
            # The W+ tokens must never reach the ControlNet: its standard processors would read them as words.
            raise ValueError(f"the ControlNet takes the 77 text tokens only, got {text_embeds.shape[1]}")
        if isinstance(conditioning_scale, torch.Tensor):
            conditioning_scale = conditioning_scale.reshape(())
        down, mid = self.controlnet(
            sample, timestep, encoder_hidden_states=text_embeds, controlnet_cond=control_image.to(sample.dtype),
            conditioning_scale=1.0, guess_mode=False, return_dict=False,
        )
        # Scaled here rather than by diffusers so an exported graph can take the scale as an input.
        return (*(d * conditioning_scale for d in down), mid * conditioning_scale)


def residual_count(controlnet: Any) -> int:
    """Number of down-block residuals the ControlNet produces (12 for SD1.5)."""
    return len(controlnet.controlnet_down_blocks)


# -- family checks -----------------------------------------------------------------------------------


def _refuse(path: Path, family: str) -> WrongModelFamily:
    return WrongModelFamily(f"{path.name} is {family}, not an SD1.5 ControlNet.", _HINT)


def _family_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """"sd15", or a human-readable name of what the file is instead."""
    keys = list(shapes)
    if any("lora" in k for k in keys):
        return "a ControlNet-LoRA (Control-LoRA), which is not supported"
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
        return "a full Stable Diffusion checkpoint (pass it as --model)"
    core = {k.removeprefix(CONTROL_PREFIX): s for k, s in shapes.items()}
    if not any("input_hint_block" in k for k in core) and "controlnet_cond_embedding.conv_in.weight" not in core:
        return "not a ControlNet (no hint/conditioning encoder)"
    context = {s[1] for k, s in core.items() if k.endswith("attn2.to_k.weight") and len(s) == 2}
    if any(k.startswith(("label_emb.", "add_embedding.")) for k in core) or 2048 in context:
        return "an SDXL ControlNet"
    if 1024 in context:
        return "an SD 2.x ControlNet (1024-wide cross-attention)"
    if context and context != {SD15_CROSS_DIM}:
        return f"a ControlNet with {sorted(context)}-wide cross-attention"
    return "sd15"


def _family_from_config(cfg: Mapping[str, Any]) -> str:
    cross = cfg.get("cross_attention_dim")
    if cfg.get("addition_embed_type") or cross == 2048:
        return "an SDXL ControlNet"
    if cross == 1024:
        return "an SD 2.x ControlNet (1024-wide cross-attention)"
    if cross != SD15_CROSS_DIM:
        return f"a ControlNet with {cross}-wide cross-attention"
    return "sd15"


# -- the A1111 single-file layout --------------------------------------------------------------------


def config_from_ldm_shapes(shapes: Mapping[str, tuple[int, ...]], base: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers `ControlNetModel` config for an A1111-layout state dict (keys without `control_model.`).

    Block channels, layers per block, attention placement, cross-attention width, hint channels and the
    conditioning encoder's channels come from the tensor shapes; what weights cannot tell (attention head
    dim, norm groups, …) comes from `base`, the SD1.5 UNet configuration.

    Raises:
        ModelCorrupt: the shapes do not describe a ControlNet.
    """
    try:
        blocks = sorted({int(m.group(1)) for k in shapes if (m := _INPUT_BLOCK.match(k))})
        ops = sorted(int(k.split(".")[1]) for k in shapes if re.match(r"^input_blocks\.\d+\.0\.op\.weight$", k))
        per_block = (ops[0] if ops else len(blocks)) - 1  # resnets per block (downsampler closes each)
        n_blocks = len(ops) + 1
        channels, types = [], []
        for b in range(n_blocks):
            first = 1 + b * (per_block + 1)
            channels.append(shapes[f"input_blocks.{first}.0.out_layers.3.weight"][0])
            has_attn = any(k.startswith(f"input_blocks.{first}.1.") for k in shapes)
            types.append("CrossAttnDownBlock2D" if has_attn else "DownBlock2D")
        hint = sorted(int(m.group(1)) for k in shapes if (m := _HINT_CONV.match(k)))
        hint_out = [shapes[f"input_hint_block.{i}.weight"][0] for i in hint]
        proj_in = next((s for k, s in shapes.items() if k.endswith("proj_in.weight")), None)
        cross = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), SD15_CROSS_DIM)
        cfg = {k: v for k, v in base.items() if not k.startswith("_") and k not in ("up_block_types", "out_channels",
                                                                                    "sample_size", "center_input_sample")}
        cfg.update(
            in_channels=shapes["input_blocks.0.0.weight"][1],
            conditioning_channels=shapes[f"input_hint_block.{hint[0]}.weight"][1],
            block_out_channels=channels,
            down_block_types=types,
            layers_per_block=per_block,
            cross_attention_dim=cross,
            use_linear_projection=bool(proj_in is not None and len(proj_in) == 2),
            conditioning_embedding_out_channels=hint_out[0:-1:2],
        )
        return cfg
    except (KeyError, IndexError, TypeError) as exc:
        raise ModelCorrupt(f"the ControlNet weights are incomplete or of an unknown layout ({exc}).") from exc


def convert_ldm_controlnet(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A1111 `control_model.*` keys → diffusers `ControlNetModel` keys (diffusers' own key mapping)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    if len(config.get("conditioning_embedding_out_channels", ())) != 4:
        # diffusers' mapping pins the hint encoder's last conv at index 14 (4 stages, as every SD1.5 ControlNet)
        raise ModelCorrupt("the ControlNet's hint encoder has an unknown layout (expected 4 stages).")
    converted = convert_controlnet_checkpoint(dict(state), dict(config))
    return {k: v for k, v in converted.items() if v is not None}


def _read_single(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    from engine.models.safe_load import load_state, read_safetensors_header

    if path.suffix.lower() == ".safetensors":
        shapes = {k: s for k, (_d, s) in read_safetensors_header(path).tensors.items()}
        family = _family_from_shapes(shapes)
        if family != "sd15":
            raise _refuse(path, family)
        state = load_state(path)
    else:
        state = load_state(path)
        if isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if hasattr(v, "shape")}
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        family = _family_from_shapes(shapes)
        if family != "sd15":
            raise _refuse(path, family)
    return state, shapes


def load_controlnet(path: str | Path, *, device: Any = "cpu", dtype: Any = None, config_dir: Path | None = None) -> Any:
    """Load an SD1.5 ControlNet (diffusers folder or single file) as a diffusers `ControlNetModel`.

    Args:
        path: the folder or file (absolute, or relative to the current directory).
        device, dtype: where the module goes (dtype None: float32).
        config_dir: the SD1.5 configuration folder (default: the one shipped in resources).

    Returns:
        The ControlNetModel in eval mode, gradients off, with its standard attention processors.

    Raises:
        ModelMissing: the path does not exist.
        WrongModelFamily: an SDXL / SD 2.x ControlNet, a Control-LoRA, a full checkpoint, not a ControlNet.
        ModelCorrupt: unreadable or incomplete weights.
    """
    from diffusers import ControlNetModel

    from engine.networks.sd15 import _assemble, default_config_dir

    p = Path(path).expanduser()
    dtype = dtype or torch.float32
    if not p.exists():
        raise ModelMissing(f"ControlNet not found: {p}.", "Check the --controlnet path (relative to the current folder).")
    if p.is_dir():
        cfg_file = p / "config.json"
        if not cfg_file.is_file():
            raise ModelCorrupt(f"{p} is not a diffusers ControlNet folder (no config.json).",
                               "Point to the folder holding config.json, or to a single .safetensors file.")
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelCorrupt(f"{cfg_file} is not a readable configuration ({exc}).") from exc
        if cfg.get("_class_name") not in (None, "ControlNetModel"):
            raise _refuse(p, f"a {cfg.get('_class_name')} folder")
        family = _family_from_config(cfg)
        if family != "sd15":
            raise _refuse(p, family)
        try:
            model = ControlNetModel.from_pretrained(str(p), local_files_only=True, torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelCorrupt(f"The ControlNet in {p} cannot be loaded ({exc}).") from exc
        model = model.to(device=device).eval()
        model.requires_grad_(False)
        return model
    state, shapes = _read_single(p)
    core = {k.removeprefix(CONTROL_PREFIX): v for k, v in state.items()}
    core_shapes = {k.removeprefix(CONTROL_PREFIX): s for k, s in shapes.items()}
    base = json.loads(((config_dir or default_config_dir()) / "unet" / "config.json").read_text(encoding="utf-8"))
    cfg = config_from_ldm_shapes(core_shapes, base)
    converted = convert_ldm_controlnet(core, cfg)
    return _assemble(lambda: ControlNetModel.from_config(cfg), converted, "ControlNet", p, device, dtype)
