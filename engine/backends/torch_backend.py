"""PyTorch runners for the SD1.5 + W+ components (the reference backend; CPU or CUDA).

Each runner takes the named tensors of `engine.backends.base.IO_SPEC` and returns a dict of named outputs.
The UNet runner also accepts a Python float for `wplus_scale`: exactly 0.0 skips the W+ branch
(bit-identical to SD1.5, and cheaper), which the pipeline uses for the delayed-conditioning steps.

The CUDA fast path (`FastPathOptions`, from `EngineConfig`) is opt-in per feature and changes nothing on
the CPU with its defaults:

* channels_last UNet and VAE (CUDA only; cuDNN's NHWC kernels);
* SDPA attention: every processor the UNet and VAE use calls `F.scaled_dot_product_attention`;
* CFG's two halves already arrive as one batch of 2 from the pipeline;
* optional `torch.compile` of the UNet and the VAE decoder (`dynamic=False`); a compile failure logs
  once and the eager module takes over for the rest of the session;
* optional CUDA-graph replay of the UNet step: one graph per input signature (shapes, dtypes, FreeU
  on/off) and per scale kind — a Python 0.0 scale captures the graph *without* the W+ branch (the
  delayed-conditioning prefix, as eager skips it), any other scale is a float32 (1,) static buffer, so a
  slider move or the switch at the end of the prefix is a buffer write, never a re-capture;
* a low-precision (fp16/bf16) VAE decode that checks its output: on NaN/Inf (the SD1.5 VAE overflows
  fp16 on some latents) the batch is decoded again by a lazily made float32 copy of the decoder, the
  event is logged once, and later decodes of the session go straight to float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.backends.base import IO_SPEC, ComponentSpec
from engine.errors import BackendUnavailable, InvalidInput

if TYPE_CHECKING:
    import torch

    from engine.networks.sd15 import SD15Components
    from engine.networks.wplus import WProj

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class FastPathOptions:
    """Speed features of the torch backend (see the module docstring). Defaults are safe everywhere.

    Args:
        channels_last: NHWC UNet and VAE weights on CUDA (ignored on the CPU, where it would only
            change summation order).
        compile: `torch.compile` the UNet and (with `compile_vae`) the VAE decoder.
        compile_mode: inductor mode ("default", "max-autotune-no-cudagraphs", …). "reduce-overhead"
            makes inductor capture its own CUDA graphs; then leave `cuda_graph` off.
        compile_vae: also compile the VAE decoder when `compile` is on.
        cuda_graph: replay the UNet step from captured CUDA graphs (CUDA only).
        max_graphs: graphs kept (least recently used dropped): each holds its own activation memory.
        compile_backend: the torch.compile backend; "inductor" in the product, "eager" (or a callable)
            in CPU tests, where it proves the wrapping without generating kernels.
    """

    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "max-autotune-no-cudagraphs"
    compile_vae: bool = True
    cuda_graph: bool = False
    max_graphs: int = 4
    compile_backend: Any = "inductor"

    @classmethod
    def from_config(cls, config: Any) -> FastPathOptions:
        """The options an `EngineConfig` asks for (missing fields keep their defaults)."""
        d = cls()
        return cls(
            channels_last=bool(getattr(config, "channels_last", d.channels_last)),
            compile=bool(getattr(config, "compile", d.compile)),
            compile_mode=str(getattr(config, "compile_mode", d.compile_mode) or d.compile_mode),
            cuda_graph=bool(getattr(config, "cuda_graph", d.cuda_graph)),
        )


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
        fast: the speed features (`FastPathOptions()`: channels_last on CUDA only, no compile, no graphs).
    """

    backend = "torch"

    def __init__(
        self,
        components: SD15Components,
        wproj: WProj,
        *,
        device: Any = "cpu",
        dtype: Any = None,
        fast: FastPathOptions | None = None,
    ) -> None:
        import torch

        from engine.backends.torch_fastpath import UNetStep, VaeDecoder
        from engine.networks.wplus import WPlusUNet

        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.fast = fast or FastPathOptions()
        self.components = components
        for name in ("unet", "vae", "text_encoder"):
            m = getattr(components, name).to(device=self.device, dtype=self.dtype).eval()
            m.requires_grad_(False)
            setattr(components, name, m)
        self.channels_last = bool(self.fast.channels_last and self.device.type == "cuda")
        if self.channels_last:
            components.unet.to(memory_format=torch.channels_last)
            components.vae.to(memory_format=torch.channels_last)
        self.wproj = wproj.to(device=self.device, dtype=self.dtype).eval()
        self.unet_module = WPlusUNet(components.unet).eval()
        self.freeu = False
        self._loras: Any = None  # engine.networks.lora.LoraPatcher, made with the first LoRA
        self._controlnets: dict[tuple[str, float], TorchRunner] = {}
        te, vae, wp, un = components.text_encoder, components.vae, self.wproj, self.unet_module
        self.unet_step = UNetStep(un, self.device, self.fast, lambda: self.freeu)
        self.vae_decode = VaeDecoder(vae, self.dtype, self.fast)
        step, decode = self.unet_step, self.vae_decode
        self._runners = {
            "text_encoder": TorchRunner(
                IO_SPEC["text_encoder"], lambda input_ids: {"text_embeds": te(input_ids.to(self.device))[0]}, te
            ),
            "unet": TorchRunner(
                IO_SPEC["unet"],
                lambda sample, timestep, text_embeds, wplus_tokens, wplus_scale, control=None: {
                    "noise_pred": step(sample, timestep, text_embeds, wplus_tokens, wplus_scale, control)
                },
                un,
            ),
            "vae_decoder": TorchRunner(IO_SPEC["vae_decoder"], lambda latent: {"image": decode(latent)}, vae),
            "identity_proj": TorchRunner(
                IO_SPEC["identity_proj"],
                lambda wplus: {"wplus_tokens": wp(wplus.to(device=self.device, dtype=self.dtype))},
                wp,
            ),
        }

    def fast_status(self) -> dict[str, str]:
        """What the fast path is doing now, for logs, `wplus info` and benches (name → short text)."""
        step, decode = self.unet_step, self.vae_decode

        def compiled(fn: Any, wanted: bool) -> str:
            if not wanted:
                return "off"
            return "on" if fn.active else f"failed, eager ({fn.error or 'could not start'})"

        if step.graphs_enabled:
            graphs = f"on ({step.graph_count} kept, {step.captures} captured)"
        elif self.fast.cuda_graph:
            graphs = f"off ({step.graph_error})"
        else:
            graphs = "off"
        dt = str(self.dtype).replace("torch.", "")
        if decode.upcast:
            vae = f"{dt}, overflowed: float32 since ({decode.fallbacks} decodes)"
        else:
            vae = dt + (" (checked for overflow)" if decode.checked else "")
        return {
            "device": str(self.device),
            "dtype": dt,
            "channels_last": "on" if self.channels_last else "off",
            "compile_unet": compiled(step.fn, self.fast.compile),
            "compile_vae": compiled(decode.fn, self.fast.compile and self.fast.compile_vae),
            "cuda_graph": graphs,
            "vae_decode": vae,
        }

    def set_loras(self, loras: Any, *, fused: bool = True) -> tuple[Any, ...]:
        """Apply a LoRA set (engine.api.LoraSpec tuple) to the UNet and text encoder; () removes them.

        Returns the parsed `engine.networks.lora.LoraFile`s. Raises as `LoraPatcher.apply`.
        """
        if self._loras is None:
            if not loras:
                return ()
            from engine.networks.lora import LoraPatcher

            self._loras = LoraPatcher(self.components.unet, self.components.text_encoder)
        files = self._loras.apply(tuple(loras), fused=fused)
        if loras and self.unet_step.graphs_enabled:
            self.unet_step.clear_graphs()  # captured graphs read the weights in place, but be explicit
        return files

    def controlnet(self, path: str) -> TorchRunner:
        """The runner of the ControlNet at `path` (loaded once, on this device and dtype; 2 kept)."""
        from pathlib import Path

        from engine.backends.base import controlnet_spec
        from engine.networks.controlnet import ControlNetResiduals, load_controlnet, residual_count

        p = Path(path)
        key = (str(p), p.stat().st_mtime if p.exists() else 0.0)
        runner = self._controlnets.get(key)
        if runner is None:
            module = ControlNetResiduals(load_controlnet(p, device=self.device, dtype=self.dtype)).eval()
            spec = controlnet_spec(residual_count(module.controlnet))
            names = [t.name for t in spec.outputs]

            def run(sample: Any, timestep: Any, text_embeds: Any, control_image: Any, conditioning_scale: Any,
                    _m: Any = module, _names: list[str] = names) -> dict[str, Any]:
                return dict(zip(_names, _m(sample, timestep, text_embeds, control_image, conditioning_scale)))

            runner = TorchRunner(spec, run, module)
            self._controlnets[key] = runner
            while len(self._controlnets) > 2:
                self._controlnets.pop(next(iter(self._controlnets)))
        return runner

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
