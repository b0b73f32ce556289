"""Seeded example inputs for the IO spec's components, and running a wrapped module on them.

The exporter and the verifier see every component through one shape: `forward(*inputs)` in the order
of `IO_SPEC[name].inputs` (`engine.backends.torch_modules.component_module`, the same wrapper the
torch backend runs), returning the outputs in spec order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from engine.backends.base import IO_SPEC, ComponentSpec
from engine.backends.profiles import ShapeProfile

CLIP_VOCAB = 49408


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
