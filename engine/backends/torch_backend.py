"""PyTorch runners for the SD1.5 + W+ components (the reference backend; CPU or CUDA).

Each runner takes the named tensors of `engine.backends.base.IO_SPEC` and returns a dict of named outputs.
The UNet runner also accepts a Python float for `wplus_scale`: exactly 0.0 skips the W+ branch
(bit-identical to SD1.5, and cheaper), which the pipeline uses for the delayed-conditioning steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.backends.base import IO_SPEC, ComponentSpec
from engine.errors import BackendUnavailable, InvalidInput

if TYPE_CHECKING:
    import torch

    from engine.networks.sd15 import SD15Components
    from engine.networks.wplus import WProj

# FreeU factors of the official pipeline (REFERENCE.md §4).
FREEU_OFFICIAL = {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}
_DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Turn config strings into a torch device and dtype.

    "auto" device: CUDA if available, else CPU. "auto" dtype: float16 on CUDA, float32 on CPU.

    Raises:
        BackendUnavailable: CUDA requested but not available, or an unknown dtype.
    """
    import torch

    if device in ("", "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise BackendUnavailable(f"Unknown device '{device}'.", "Use cpu, cuda, cuda:N or auto.") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"The device '{device}' was requested but CUDA is not available in this build of PyTorch "
                f"({torch.__version__}).",
                "Use --device cpu, or install a CUDA build of PyTorch and an NVIDIA driver.",
            )
    if dtype in ("", "auto"):
        dt = torch.float16 if dev.type == "cuda" else torch.float32
    elif dtype in _DTYPES:
        dt = getattr(torch, dtype)
    else:
        raise BackendUnavailable(f"Unknown dtype '{dtype}'.", f"Use one of {', '.join(_DTYPES)} or auto.")
    return dev, dt


class TorchRunner:
    """One component as a callable with named inputs/outputs (the `Runner` protocol)."""

    backend = "torch"

    def __init__(self, spec: ComponentSpec, fn: Callable[..., dict[str, Any]], module: Any = None) -> None:
        self.spec = spec
        self._fn = fn
        self.module = module

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        import torch

        missing = [t.name for t in self.spec.inputs if t.name not in inputs]
        if missing:
            raise InvalidInput(f"The {self.spec.name} runner is missing inputs: {', '.join(missing)}.")
        with torch.no_grad():
            return self._fn(**inputs)


class TorchRunners:
    """Runners for text_encoder, unet (WPlusUNet), vae_decoder and identity_proj on one device/dtype.

    Args:
        components: loaded SD1.5 (its UNet must have the W+ processors installed, e.g. by
            `engine.networks.wplus.load_wplus_adapter`).
        wproj: the adapter's WProj.
        device, dtype: where the modules are (they are moved there).
    """

    backend = "torch"

    def __init__(self, components: SD15Components, wproj: WProj, *, device: Any = "cpu", dtype: Any = None) -> None:
        import torch

        from engine.networks.wplus import WPlusUNet

        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.components = components
        for name in ("unet", "vae", "text_encoder"):
            m = getattr(components, name).to(device=self.device, dtype=self.dtype).eval()
            m.requires_grad_(False)
            setattr(components, name, m)
        self.wproj = wproj.to(device=self.device, dtype=self.dtype).eval()
        self.unet_module = WPlusUNet(components.unet).eval()
        self.freeu = False
        te, vae, wp, un = components.text_encoder, components.vae, self.wproj, self.unet_module
        self._runners = {
            "text_encoder": TorchRunner(
                IO_SPEC["text_encoder"], lambda input_ids: {"text_embeds": te(input_ids.to(self.device))[0]}, te
            ),
            "unet": TorchRunner(
                IO_SPEC["unet"],
                lambda sample, timestep, text_embeds, wplus_tokens, wplus_scale: {
                    "noise_pred": un(sample, timestep, text_embeds, wplus_tokens, wplus_scale)
                },
                un,
            ),
            "vae_decoder": TorchRunner(
                IO_SPEC["vae_decoder"], lambda latent: {"image": vae.decode(latent.to(self.dtype)).sample}, vae
            ),
            "identity_proj": TorchRunner(
                IO_SPEC["identity_proj"],
                lambda wplus: {"wplus_tokens": wp(wplus.to(device=self.device, dtype=self.dtype))},
                wp,
            ),
        }

    def get(self, component: str) -> TorchRunner:
        try:
            return self._runners[component]
        except KeyError:
            raise BackendUnavailable(f"The torch backend has no '{component}' component.") from None

    def set_freeu(self, enabled: bool) -> None:
        """Switch FreeU (official factors s1 0.6, s2 0.4, b1 1.1, b2 1.2) on the UNet."""
        # Always applied: another user of the same UNet (a test's reference pipeline) may have changed it.
        if enabled:
            self.components.unet.enable_freeu(**FREEU_OFFICIAL)
        else:
            self.components.unet.disable_freeu()
        self.freeu = enabled
