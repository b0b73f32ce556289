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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from engine.backends.base import IO_SPEC, ComponentSpec, Runner
from engine.backends.profiles import check_shapes, coerce_inputs
from engine.backends.torch_options import FastPathOptions
from engine.errors import BackendUnavailable, ModelMissing

if TYPE_CHECKING:

    from engine.networks.sd15 import SD15Components
    from engine.networks.wplus import WProj

log = logging.getLogger(__name__)

# FreeU factors of the official pipeline (REFERENCE.md §4).
FREEU_OFFICIAL = {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}


class TorchRunner:
    """One component as a callable with named inputs/outputs (the `Runner` protocol).

    Inputs are checked against the IO spec as the exported backends check them (names, ranks, fixed
    sizes, agreeing named dimensions); torch has no shape profile, so any size the spec allows runs.
    The inputs reach `fn` as given: a Python 0.0 `wplus_scale` stays a float (it skips the W+ branch).
    """

    backend = "torch"

    def __init__(self, spec: ComponentSpec, fn: Callable[..., dict[str, Any]], module: Any = None) -> None:
        self.spec = spec
        self._fn = fn
        self.module = module

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        import torch

        coerced = coerce_inputs(self.spec, inputs)
        check_shapes(self.spec, {k: tuple(v.shape) for k, v in coerced.items() if isinstance(v, torch.Tensor)},
                     artifact="the torch model")
        with torch.no_grad():
            return self._fn(**inputs)


def module_runner(component: str, module: Any) -> TorchRunner:
    """A torch runner of any IO-spec component from its module (e4e, ParseNet, the StyleGAN2 preview, …).

    Float inputs are moved to the module's device and dtype; outputs come back there, named as the
    spec names them. The SD components of the pipeline use `TorchRunners` instead (fast path, FreeU).

    Args:
        component: an `IO_SPEC` name.
        module: the torch model (see `engine.backends.torch_modules.component_module`).
    """
    import torch

    from engine.backends.torch_modules import component_module, module_device, module_dtype

    spec = IO_SPEC[component]
    wrapped = component_module(component, module)
    device, dtype = module_device(wrapped), module_dtype(wrapped)

    def run(**inputs: Any) -> dict[str, Any]:
        args = []
        for t in spec.inputs:
            v = torch.as_tensor(inputs[t.name])
            args.append(v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
        out = wrapped(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {t.name: o for t, o in zip(spec.outputs, outs)}

    return TorchRunner(spec, run, wrapped)


class TorchModuleRunners:
    """Torch runners loaded on first use, one loader per component (the face chain's, the preview's).

    Args:
        loaders: component → a function returning its Runner (e.g. `module_runner(c, load(...))`).
        device, dtype: what the loaders load to (reported as the `Runners` protocol asks).
    """

    backend = "torch"

    def __init__(self, loaders: Mapping[str, Callable[[], Runner]], device: Any = "cpu", dtype: Any = None) -> None:
        import torch

        self.loaders = dict(loaders)
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self._runners: dict[str, Runner] = {}

    def available(self) -> list[str]:
        """Components this object can load."""
        return list(self.loaders)

    def get(self, component: str) -> Runner:
        """The runner of `component`, loading its module on first use.

        Raises:
            ModelMissing: no model for the component here.
        """
        if component not in self._runners:
            if component not in self.loaders:
                raise ModelMissing(f"There is no torch model for the {component} component.")
            self._runners[component] = self.loaders[component]()
        return self._runners[component]


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

    def available(self) -> list[str]:
        """The components these runners provide."""
        return list(self._runners)
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
