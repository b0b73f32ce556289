"""The one protocol every backend implements, and the IO spec that names each component's tensors.

The pipeline calls runners by component name with named torch tensors and gets named torch tensors
back; it never asks which backend produced them. `export/` names ONNX inputs from the same spec, so a
runner built from an ONNX file or a TensorRT engine is a drop-in replacement for the torch one.

A new component is added by declaring its `ComponentSpec` here (and, for export, the torch module
whose forward takes the inputs in spec order: `engine.backends.torch_modules.component_module`);
every backend, the exporter and the conformance tests (`tests/backends/`) then handle it.

This module is the bottom of the backends package: it imports nothing from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output. Dims are ints (static) or names (dynamic axes)."""

    name: str
    dims: tuple[int | str, ...]
    dtype: str = "float32"  # "float32" here means "the component's compute dtype" for floats


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


# Dynamic axes: B batch (the UNet sees 2·n with CFG), H/W latent height/width (image / 8).
IO_SPEC: Mapping[str, ComponentSpec] = {
    "text_encoder": ComponentSpec(
        "text_encoder",
        (TensorSpec("input_ids", ("B", 77), "int64"),),
        (TensorSpec("text_embeds", ("B", 77, 768)),),
    ),
    "unet": ComponentSpec(
        "unet",
        (
            TensorSpec("sample", ("B", 4, "H", "W")),
            TensorSpec("timestep", ("B",)),
            TensorSpec("text_embeds", ("B", 77, 768)),
            TensorSpec("wplus_tokens", ("B", 4, 768)),
            TensorSpec("wplus_scale", (1,)),
        ),
        (TensorSpec("noise_pred", ("B", 4, "H", "W")),),
    ),
    "vae_decoder": ComponentSpec(
        "vae_decoder",
        (TensorSpec("latent", ("B", 4, "H", "W")),),  # already divided by the VAE scaling factor
        (TensorSpec("image", ("B", 3, "8H", "8W")),),  # in [-1, 1], not clamped
    ),
    "face_encoder": ComponentSpec(
        "face_encoder",
        (TensorSpec("image", ("B", 3, 256, 256)),),  # [-1, 1], background whitened
        (TensorSpec("wplus", ("B", 18, 512)),),  # codes + latent_avg
    ),
    "identity_proj": ComponentSpec(
        "identity_proj",
        (TensorSpec("wplus", ("B", 18, 512)),),
        (TensorSpec("wplus_tokens", ("B", 4, 768)),),
    ),
    "face_parser": ComponentSpec(
        "face_parser",
        (TensorSpec("image", ("B", 3, 512, 512)),),
        (TensorSpec("logits", ("B", 19, 512, 512)),),
    ),
    "face_restorer": ComponentSpec(  # PSFRGAN generator (optional, the official -s step)
        "face_restorer",
        (TensorSpec("image", ("B", 3, 512, 512)), TensorSpec("parse", ("B", 19, 512, 512))),  # [-1, 1]; one-hot
        (TensorSpec("restored", ("B", 3, 512, 512)),),  # unbounded (tensor2pil clips)
    ),
    "stylegan_preview": ComponentSpec(
        "stylegan_preview",
        (TensorSpec("wplus", ("B", 18, 512)),),
        (TensorSpec("image", ("B", 3, "R", "R")),),  # R: the level the export stops at, fixed per export
    ),
}


def onnx_file_name(component: str) -> str:
    """File name of a component's export inside an ONNX folder (`unet` → `unet.onnx`)."""
    return f"{component}.onnx"
SD15_CONTROL_RESIDUALS = 12  # ControlNet down-block residuals of SD1.5 (conv_in + 11 block outputs), then "mid"


def residual_names(n_down: int = SD15_CONTROL_RESIDUALS) -> tuple[str, ...]:
    """Names of a ControlNet's residual tensors, in the UNet's order: down_0 … down_{n-1}, mid."""
    return (*(f"down_{i}" for i in range(n_down)), "mid")


def controlnet_spec(n_down: int = SD15_CONTROL_RESIDUALS) -> ComponentSpec:
    """The ControlNet component: the 77 text tokens only (never the W+ tokens); residuals pre-scaled."""
    return ComponentSpec(
        "controlnet",
        (
            TensorSpec("sample", ("B", 4, "H", "W")),
            TensorSpec("timestep", ("B",)),
            TensorSpec("text_embeds", ("B", 77, 768)),
            TensorSpec("control_image", ("B", 3, "8H", "8W")),  # RGB in [0, 1]
            TensorSpec("conditioning_scale", (1,)),
        ),
        tuple(TensorSpec(n, ("B", f"C_{n}", f"H_{n}", f"W_{n}")) for n in residual_names(n_down)),
    )


def unet_control_spec(n_down: int = SD15_CONTROL_RESIDUALS) -> ComponentSpec:
    """The UNet that also takes ControlNet residuals (summed over ControlNets) as inputs."""
    base = IO_SPEC["unet"]
    extra = tuple(TensorSpec(n, ("B", f"C_{n}", f"H_{n}", f"W_{n}")) for n in residual_names(n_down))
    return ComponentSpec("unet_control", base.inputs + extra, base.outputs)


@runtime_checkable
class Runner(Protocol):
    """A callable component: named torch tensors in, named torch tensors out."""

    spec: ComponentSpec
    backend: str  # "torch", "onnxruntime", "tensorrt"

    def __call__(self, **inputs: Any) -> dict[str, Any]: ...


class Runners(Protocol):
    """What the pipeline needs: a runner per component name, and where tensors should live."""

    device: Any  # torch.device
    dtype: Any  # torch.dtype of float inputs

    def get(self, component: str) -> Runner: ...
