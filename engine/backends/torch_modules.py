"""torch modules whose forward takes a component's IO-spec inputs in spec order and returns its outputs.

The torch backend runs them (`engine.backends.torch_backend.module_runner`) and `export/` exports
them, so the torch runner and the ONNX graph of a component are the same function. The wrappers only
adapt call conventions (keyword names, return_dict, which head); they add no computation.

torch is imported at module level: import this module lazily (the backends do).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.backends.base import IO_SPEC


class TextEncoderModule(nn.Module):
    """CLIP text model: input_ids (B×77 int64) → last hidden state (B×77×768), as SD1.5 conditions on it."""

    model: nn.Module

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.model = text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, return_dict=False)[0]


class VaeDecoderModule(nn.Module):
    """AutoencoderKL decode: latent (already ÷ scaling factor) → image in [-1, 1], not clamped."""

    vae: Any  # AutoencoderKL: its `decode` is a method, not a submodule

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


class ParserLogitsModule(nn.Module):
    """ParseNet: image (B×3×512×512, [-1, 1]) → the 19-class logits only (the image head is unused)."""

    parser: Any  # ParseNet: its `logits` is a method, not a submodule

    def __init__(self, parser: nn.Module) -> None:
        super().__init__()
        self.parser = parser

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.parser.logits(image)


def component_module(component: str, module: nn.Module) -> nn.Module:
    """Wrap `module` so its forward takes the IO spec's inputs positionally.

    Args:
        component: an `IO_SPEC` name.
        module: the torch model: CLIPTextModel, WPlusUNet (or a UNet2DConditionModel with the W+
            processors installed), AutoencoderKL, E4EEncoder, WProj, ParseNet, a StyleGAN2
            `PreviewModule`, or an already wrapped module. Modules of other components must already
            take the spec's inputs in order.

    Returns:
        A module in eval mode.

    Raises:
        ValueError: an unknown component name.
    """
    if component not in IO_SPEC:
        raise ValueError(f"unknown component {component!r}; known: {', '.join(IO_SPEC)}")
    wrapped: nn.Module = module
    if component == "text_encoder" and not isinstance(module, TextEncoderModule):
        wrapped = TextEncoderModule(module)
    elif component == "unet":
        from engine.networks.wplus import WPlusUNet

        if not isinstance(module, WPlusUNet):
            wrapped = WPlusUNet(module)
    elif component == "vae_decoder" and not isinstance(module, VaeDecoderModule):
        wrapped = VaeDecoderModule(module)
    elif component == "face_parser" and hasattr(module, "logits") and not isinstance(module, ParserLogitsModule):
        wrapped = ParserLogitsModule(module)
    return wrapped.eval()


def module_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype of the module's parameters (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def module_device(module: nn.Module) -> torch.device:
    """Where the module's parameters (or buffers) are; the CPU when it has none."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")
