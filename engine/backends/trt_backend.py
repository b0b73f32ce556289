"""TensorRT backend: runners over built engines, same protocol as the torch and ONNX Runtime backends.

Each runner owns an execution context, a CUDA stream and torch CUDA buffers allocated once at the
profile's largest shapes; a call copies the inputs into the buffers, sets shapes and addresses
(`set_input_shape`, `set_tensor_address`) and enqueues `execute_async_v3` on its stream. Engines
come from `engine.backends.trt_build.ensure_engine`, which refuses or rebuilds a stale or foreign one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from engine.backends.artifacts import read_artifact
from engine.backends.base import IO_SPEC, ComponentSpec, Runner, onnx_file_name
from engine.backends.profiles import ShapeProfile, check_shapes, coerce_inputs, output_shape
from engine.backends.trt_build import (
    REBUILD_HINT,
    EngineCache,
    GpuInfo,
    engine_key,
    ensure_engine,
    tensorrt_module,
)
from engine.errors import EngineMismatch, ModelCorrupt

log = logging.getLogger(__name__)


def _torch_dtype(trt: Any, dt: Any) -> Any:
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
    if dt not in table:
        raise ModelCorrupt(f"The TensorRT engine uses an IO type this app does not handle: {dt}.", REBUILD_HINT)
    return table[dt]


class TrtRunner:
    """One component on one deserialized TensorRT engine.

    Args:
        spec: the component's IO spec.
        plan: the engine file.
        profile: the shape profile it was built with (inputs outside it are refused with a message).
        device: the CUDA device.
    """

    backend = "tensorrt"

    def __init__(self, spec: ComponentSpec, plan: str | os.PathLike[str], profile: ShapeProfile,
                 device: Any = "cuda") -> None:
        import torch

        trt = tensorrt_module()
        self.spec = spec
        self.path = Path(plan)
        self.profile = profile
        self.device = torch.device(device)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"TensorRT refused to load {self.path.name} (another TensorRT version or GPU, or a "
                                 "damaged file).", REBUILD_HINT)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        expected = [t.name for t in (*spec.inputs, *spec.outputs)]
        if sorted(names) != sorted(expected):
            raise ModelCorrupt(f"{self.path.name} has tensors {names}; the {spec.name} component needs {expected}.",
                               REBUILD_HINT)
        dims = {n: r.max for n, r in profile.dims}
        self._buffers: dict[str, Any] = {}
        for t in spec.inputs:
            shape = tuple(self.engine.get_tensor_profile_shape(t.name, 0)[2])
            self._buffers[t.name] = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(t.name)),
                                                device=self.device)
        for t in spec.outputs:
            self._buffers[t.name] = torch.empty(output_shape(t, dims),
                                                dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(t.name)),
                                                device=self.device)

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        """Run the component on CUDA tensors (CPU tensors are moved first).

        Raises:
            InvalidInput: a missing input or a shape outside the engine's profile.
        """
        import torch

        inputs = coerce_inputs(self.spec, inputs)
        dims = check_shapes(self.spec, {k: tuple(v.shape) for k, v in inputs.items()}, self.profile,
                            artifact=self.path.name)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            for t in self.spec.inputs:
                src = torch.as_tensor(inputs[t.name])
                view = _view(self._buffers[t.name], tuple(src.shape))
                view.copy_(src.to(self.device, non_blocking=True))
                self.context.set_input_shape(t.name, tuple(src.shape))
                self.context.set_tensor_address(t.name, view.data_ptr())
            outs = {}
            for t in self.spec.outputs:
                shape = tuple(self.context.get_tensor_shape(t.name))
                if any(s < 0 for s in shape):
                    shape = output_shape(t, dims)
                view = _view(self._buffers[t.name], shape)
                self.context.set_tensor_address(t.name, view.data_ptr())
                outs[t.name] = view
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineMismatch(f"TensorRT failed to run {self.spec.name} ({self.path.name}).", REBUILD_HINT)
        caller.wait_stream(self.stream)
        # The buffers are reused by the next call; hand out copies made on the caller's stream.
        return {k: v.clone() for k, v in outs.items()}


def _view(buf: Any, shape: tuple[int, ...]) -> Any:
    n = 1
    for s in shape:
        n *= int(s)
    return buf.view(-1)[:n].view(shape)


class TrtRunners:
    """Runners for the exported components, each on an engine from the cache (built when allowed).

    Args:
        onnx_dir: the folder with the ONNX exports (`<component>.onnx`).
        cache_dir: where engines are kept.
        profile: the optimization profile (None: each component's ONNX export profile, which an
            engine cannot exceed anyway).
        precision: "fp16" (default) or "fp32".
        allow_build: build missing or stale engines (minutes each); False refuses them.
        fallback: runners for components that have no ONNX export.
        progress: build progress callback (phase, fraction).
    """

    backend = "tensorrt"

    def __init__(self, onnx_dir: str | os.PathLike[str], cache_dir: str | os.PathLike[str],
                 profile: ShapeProfile | None = None, *, precision: str = "fp16", device: str = "cuda", allow_build: bool = True,
                 fallback: Any = None, progress: Any = None) -> None:
        import torch

        tensorrt_module()
        self.gpu = GpuInfo.current(torch.device(device).index or 0)
        self.onnx_dir = Path(onnx_dir)
        self.cache = EngineCache(cache_dir)
        self.profile = profile
        self.precision = precision
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.allow_build = allow_build
        self.fallback = fallback
        self.progress = progress
        self.notes: list[str] = []
        self._runners: dict[str, Runner] = {}

    def available(self) -> list[str]:
        """Components that have an ONNX export to build an engine from, or a fallback runner."""
        extra = self.fallback.available() if self.fallback is not None else []
        return [c for c in IO_SPEC if (self.onnx_dir / onnx_file_name(c)).is_file() or c in extra]

    def get(self, component: str) -> Runner:
        """The runner of `component` (building its engine on first use when allowed)."""
        if component in self._runners:
            return self._runners[component]
        onnx = self.onnx_dir / onnx_file_name(component)
        if not onnx.is_file() and self.fallback is not None:
            runner = self.fallback.get(component)
        else:
            profile = self.profile or read_artifact(onnx, component).profile
            key = engine_key(onnx, component, self.precision, profile, gpu=self.gpu)
            plan, reasons = ensure_engine(self.cache, onnx, component, profile, precision=self.precision,
                                          allow_build=self.allow_build, progress=self.progress, key=key)
            self.notes.extend(f"rebuilt {component}: {r}" for r in reasons)
            runner = TrtRunner(IO_SPEC[component], plan, profile, self.device)
        self._runners[component] = runner
        return runner

    def close(self) -> None:
        self._runners.clear()

