"""torch modules with exactly the IO spec's inputs and outputs, and seeded inputs for them.

The exporter and the verifier see every component through one shape: `forward(*inputs)` in the order
of `IO_SPEC[name].inputs`, returning the outputs in spec order. The wrappers only adapt call
conventions (keyword names, return_dict); they add no computation, so the ONNX graph is the torch
model's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from engine.backends.base import IO_SPEC, ComponentSpec
from engine.backends.profiles import ShapeProfile

CLIP_VOCAB = 49408


class TextEncoderModule(nn.Module):
    """CLIP text model: input_ids (B×77 int64) → last hidden state (B×77×768), as SD1.5 conditions on it."""

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.model = text_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, return_dict=False)[0]


class VaeDecoderModule(nn.Module):
    """AutoencoderKL decode: latent (already ÷ scaling factor) → image in [-1, 1], not clamped."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


class ParserLogitsModule(nn.Module):
    """ParseNet: image (B×3×512×512, [-1, 1]) → the 19-class logits only (the image head is unused)."""

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
            processors installed), AutoencoderKL, E4EEncoder, WProj, ParseNet, or an already
            wrapped module.

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


def module_bytes(module: nn.Module) -> int:
    """Bytes of all parameters and buffers (what becomes ONNX initializers)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def example_inputs(
    component: str,
    profile: ShapeProfile,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    which: str = "opt",
    vocab_size: int = CLIP_VOCAB,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Seeded inputs of the profile's shapes, with values in each input's natural range.

    Images are tanh(normal) in (-1, 1); token ids uniform in [0, vocab_size); timesteps integers in
    [0, 1000); the W+ scale 0.75; everything else standard normal (W+ at half scale).

    Args:
        component: an `IO_SPEC` name.
        profile: gives the dynamic dimensions' sizes.
        seed: the generator seed (equal seeds, equal inputs).
        dtype: dtype of floating inputs.
        device: where the tensors are made.
        which: "min", "opt" or "max" of the profile.
        vocab_size: upper bound of token ids.
        shapes: explicit shapes per input, overriding the profile.
    """
    spec: ComponentSpec = IO_SPEC[component]
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for t in spec.inputs:
        shape = tuple(shapes[t.name]) if shapes and t.name in shapes else profile.shapes(t, which)
        if t.dtype == "int64":
            value = torch.randint(0, vocab_size, shape, generator=g, dtype=torch.int64)
        elif t.name == "timestep":
            value = torch.randint(0, 1000, shape, generator=g).to(torch.float32)
        elif t.name == "wplus_scale":
            value = torch.full(shape, 0.75)
        elif t.name == "image":
            value = torch.tanh(torch.randn(shape, generator=g))
        elif t.name == "wplus":
            value = 0.5 * torch.randn(shape, generator=g)
        elif t.name == "parse":  # a one-hot class map (19 classes on axis 1), as ParseNet's argmax gives
            classes = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
            value = torch.nn.functional.one_hot(classes, shape[1]).permute(0, 3, 1, 2).float()
        else:
            value = torch.randn(shape, generator=g)
        if value.is_floating_point():
            value = value.to(dtype)
        out[t.name] = value.to(device)
    return out


def run_torch(component: str, module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run a wrapped module on named inputs and name its outputs as the spec does."""
    spec = IO_SPEC[component]
    with torch.inference_mode():
        result: Any = module(*(inputs[t.name] for t in spec.inputs))
    results = result if isinstance(result, (tuple, list)) else (result,)
    return {t.name: r for t, r in zip(spec.outputs, results)}
