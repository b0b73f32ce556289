"""The CUDA fast path of the torch backend: compiled modules, CUDA-graph UNet steps, a guarded fp16 VAE decode.

Imported only by `engine.backends.torch_backend.TorchRunners` (torch is imported at module level here).
Every piece falls back to the eager module it wraps, logs why once, and says so in
`TorchRunners.fast_status()`; none of them changes a result on the CPU with the default options.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from engine.backends.torch_options import FastPathOptions

log = logging.getLogger(__name__)


def compile_module(module: nn.Module, what: str, fast: FastPathOptions) -> Any:
    """`torch.compile(module, dynamic=False)` (lazy: traced at the first call), or None if it cannot start.

    Args:
        module: the eager module.
        what: its name in log lines.
        fast: backend and mode (the mode is passed to inductor only).
    """
    kwargs: dict[str, Any] = {"dynamic": False, "backend": fast.compile_backend}
    if fast.compile_backend == "inductor":
        kwargs["mode"] = fast.compile_mode
    try:
        return torch.compile(module, **kwargs)
    except Exception as exc:  # an unknown mode/backend, or no compiler support in this build
        log.warning("torch.compile of the %s could not start (%s); running it eagerly.", what, exc)
        return None


def _short(exc: BaseException) -> str:
    """One line for a log: the backend's own error when dynamo wraps it (BackendCompilerFailed)."""
    inner = getattr(exc, "inner_exception", None)
    if isinstance(inner, BaseException):
        exc = inner
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


class WithFallback:
    """A compiled callable that hands over to the eager one, for good, after its first failure.

    torch.compile traces on the first call of each input signature, so failures surface there rather
    than at `torch.compile(...)`; the eager module computes the same function.

    Args:
        what: name in log lines.
        eager: the eager callable.
        compiled: the compiled one, or None (then this is the eager callable).
    """

    def __init__(self, what: str, eager: Callable[..., Any], compiled: Callable[..., Any] | None) -> None:
        self.what = what
        self.eager = eager
        self.compiled = compiled
        self.error: str | None = None

    @property
    def active(self) -> bool:
        """Whether calls still go to the compiled callable."""
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # dynamo/inductor errors share no base class
                self.error = _short(exc)
                self.compiled = None
                log.warning("The compiled %s failed (%s); running it eagerly from now on.", self.what, self.error)
        return self.eager(*args, **kwargs)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    scale: torch.Tensor | float  # the float32 (1,) buffer, or 0.0 for the graph without the W+ branch
    output: torch.Tensor


class UNetStep:
    """The UNet runner's function: eager, compiled and/or replayed from CUDA graphs.

    With neither compile nor graphs active this is exactly `WPlusUNet.forward` (a float scale passes
    through). Otherwise a non-zero float scale becomes a float32 (1,) tensor so that neither dynamo
    (which specialises on Python floats) nor a graph (whose scale is a static buffer) sees a new
    constant per slider value; 0.0 stays a float, so the delayed-conditioning prefix keeps skipping
    the W+ branch (its own graph, cheaper, and bit-for-bit SD1.5 as in eager).

    Graphs are keyed by the input shapes and dtypes, the scale kind (float 0.0 / tensor) and
    `signature_extra()` (FreeU on/off, which changes the captured kernels).

    Args:
        module: the eager `WPlusUNet`.
        device: where it runs.
        fast: the options.
        signature_extra: returns what else changes the captured computation.
    """

    warmup_calls = 2

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        fast: FastPathOptions,
        signature_extra: Callable[[], Hashable] = tuple,
    ) -> None:
        self.module = module
        self.device = device
        self.fast = fast
        self._extra = signature_extra
        compiled = compile_module(module, "UNet", fast) if fast.compile else None
        self.fn = WithFallback("UNet", module, compiled)
        self.graphs_enabled = bool(fast.cuda_graph and device.type == "cuda")
        self.graph_error: str | None = None
        if fast.cuda_graph and device.type != "cuda":
            self.graph_error = f"needs a CUDA device, not {device}"
        elif self.graphs_enabled and compiled is not None and fast.compile_mode == "reduce-overhead":
            # inductor captures its own graphs in that mode; capturing them again inside ours is not supported.
            self.graphs_enabled = False
            self.graph_error = "torch.compile mode 'reduce-overhead' already replays CUDA graphs"
        if self.graph_error:
            log.info("The UNet step runs without our CUDA graphs: %s.", self.graph_error)
        self.captures = 0
        self._graphs: OrderedDict[Hashable, _Graph] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def graph_count(self) -> int:
        """Graphs currently kept."""
        return len(self._graphs)

    def clear_graphs(self) -> None:
        """Drop the captured graphs (a LoRA set changed the weights the graphs were captured with)."""
        self._graphs.clear()

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        wplus_tokens: torch.Tensor,
        wplus_scale: torch.Tensor | float,
        control: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        if control or not (self.fn.active or self.graphs_enabled):
            # ControlNet residuals are per-step inputs of their own: such steps run eagerly.
            return self.module(sample, timestep, text_embeds, wplus_tokens, wplus_scale, control)
        scale = self.prepare_scale(wplus_scale)
        if isinstance(timestep, torch.Tensor):
            # The pipeline passes t.expand(batch) (stride 0); dynamo guards strides, so one layout means one
            # compiled graph per shape instead of two.
            timestep = timestep.contiguous()
        if self.graphs_enabled:
            inputs = {"sample": sample, "timestep": timestep, "text_embeds": text_embeds, "wplus_tokens": wplus_tokens}
            out = self._replay(inputs, scale)
            if out is not None:
                return out
        return self.fn(sample, timestep, text_embeds, wplus_tokens, scale)

    def prepare_scale(self, scale: torch.Tensor | float) -> torch.Tensor | float:
        """The scale as the compiled/graphed step takes it: 0.0 stays a float, other floats a float32 (1,)."""
        if isinstance(scale, torch.Tensor):
            return scale
        if float(scale) == 0.0:
            return 0.0
        return torch.full((1,), float(scale), dtype=torch.float32, device=self.device)

    def _replay(self, inputs: dict[str, Any], scale: torch.Tensor | float) -> torch.Tensor | None:
        inputs = {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v, device=self.device)
                  for k, v in inputs.items()}
        key = (
            tuple((k, tuple(v.shape), v.dtype) for k, v in inputs.items()),
            isinstance(scale, torch.Tensor),
            self._extra(),
        )
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(inputs, scale)
                if entry is None:
                    return None
                self._graphs[key] = entry
                while len(self._graphs) > max(1, self.fast.max_graphs):
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
                for k, v in inputs.items():
                    entry.inputs[k].copy_(v)
                if isinstance(entry.scale, torch.Tensor) and isinstance(scale, torch.Tensor):  # same key
                    entry.scale.copy_(scale.reshape(-1)[:1])
            entry.graph.replay()
            # The output buffer is overwritten by the next replay, and schedulers may keep a step's output.
            return entry.output.clone()

    def _capture(self, inputs: dict[str, torch.Tensor], scale: torch.Tensor | float) -> _Graph | None:
        try:
            static: dict[str, torch.Tensor] = {}
            for k, v in inputs.items():
                static[k] = torch.empty_like(v, device=self.device)
                static[k].copy_(v)
            static_scale: torch.Tensor | float = 0.0
            if isinstance(scale, torch.Tensor):
                static_scale = torch.empty(1, dtype=torch.float32, device=self.device)
                static_scale.copy_(scale.reshape(-1)[:1])

            def step() -> torch.Tensor:
                return self.fn(static["sample"], static["timestep"], static["text_embeds"], static["wplus_tokens"],
                               static_scale)

            # Warm up off the capture: cuDNN autotuning, lazy initialisation and compilation must not be
            # recorded into the graph.
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup_calls):
                    step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = step()
            self.captures += 1
            return _Graph(graph, static, static_scale, output)
        except Exception as exc:  # capture rejects host syncs and some allocator uses: run eagerly instead
            self.graph_error = _short(exc)
            self.graphs_enabled = False
            self._graphs.clear()
            log.warning("CUDA graph capture of the UNet step failed (%s); running eager steps from now on.",
                        self.graph_error)
            return None


class DecoderModule(nn.Module):
    """post_quant_conv + decoder of an AutoencoderKL: `vae.decode(z).sample` without tiling or slicing.

    Holds the VAE's own submodules (no copy), so it is what both the eager and the compiled decode run.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.post_quant_conv: nn.Module | None = getattr(vae, "post_quant_conv", None)
        self.decoder = vae.get_submodule("decoder")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class VaeDecoder:
    """The VAE decoder runner's function, with the low-precision overflow guard.

    In float16/bfloat16 the image is checked for NaN/Inf (the SD1.5 VAE overflows fp16 on some
    latents). On the first overflow the batch is decoded again by a float32 copy of the decoder
    (made then, once), a warning is logged, and every later decode of this runner goes straight to
    float32. Float32 outputs are not checked (there is nothing to fall back to).

    Args:
        vae: the AutoencoderKL, already on its device and dtype.
        dtype: the compute dtype.
        fast: compile options (`compile` and `compile_vae`).
    """

    def __init__(self, vae: nn.Module, dtype: torch.dtype, fast: FastPathOptions) -> None:
        self.module = DecoderModule(vae)
        self.dtype = dtype
        self.checked = dtype in (torch.float16, torch.bfloat16)
        compiled = compile_module(self.module, "VAE decoder", fast) if fast.compile and fast.compile_vae else None
        self.fn = WithFallback("VAE decoder", self.module, compiled)
        self.upcast = False
        self.fallbacks = 0
        self._fp32: nn.Module | None = None

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        if not self.upcast:
            image = self.fn(latent.to(self.dtype))
            # This syncs with the device, but the pipeline copies the image to the host right after anyway.
            if not self.checked or bool(torch.isfinite(image).all()):
                return image
            self.upcast = True
            log.warning(
                "The %s VAE decode overflowed (NaN/Inf in the image); decoding in float32 for the rest of "
                "this session.", str(self.dtype).replace("torch.", ""),
            )
        self.fallbacks += 1
        return self.float32_module()(latent.to(torch.float32))

    def float32_module(self) -> nn.Module:
        """The float32 copy of the decoder (made on first use; a copy, since the original may be compiled)."""
        if self._fp32 is None:
            self._fp32 = copy.deepcopy(self.module).to(torch.float32).eval()
        return self._fp32
