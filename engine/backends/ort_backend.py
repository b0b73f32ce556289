"""ONNX Runtime backend: runners over exported ONNX files, same protocol as the torch backend.

Named torch tensors in, named torch tensors out. On the CPU execution provider tensors go through
numpy without copies where possible; on the CUDA (and TensorRT) execution provider the runner binds
the caller's CUDA tensors and pre-allocated torch outputs with IO binding, so nothing leaves the GPU.

Every file is checked before a session opens (present, not truncated, of the right component,
made from the current weights when they are known) and every call is checked against the
component's IO spec and the export's shape profile, so a wrong size gets a sentence, not an ORT
stack trace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.backends.artifacts import (
    REEXPORT_HINT,
    ArtifactInfo,
    WeightSource,
    changed_weight_files,
    check_up_to_date,
    read_artifact,
)
from engine.backends.base import IO_SPEC, ComponentSpec, Runner, onnx_file_name
from engine.backends.ort_controls import OrtControls
from engine.backends.packages import onnxruntime_conflict
from engine.backends.profiles import ShapeProfile, check_shapes, coerce_inputs, output_shape
from engine.errors import (
    BackendUnavailable,
    EngineMismatch,
    InvalidInput,
    ModelCorrupt,
    ModelMissing,
    OutOfMemory,
)

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers here ([] when onnxruntime is not installed)."""
    try:
        import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return []
    return list(ort.get_available_providers())


def providers_for(device: str, available: Sequence[str] | None = None, *, tensorrt: bool = False) -> list[str]:
    """Execution providers for a device, best first, CPU last as ONNX Runtime's own fallback.

    Raises:
        BackendUnavailable: CUDA was asked for but this onnxruntime has no CUDA provider.
    """
    have = list(available) if available is not None else available_providers()
    if device.startswith("cuda"):
        if CUDA not in have:
            raise BackendUnavailable(
                "ONNX Runtime here has no CUDA execution provider (the CPU-only 'onnxruntime' package is installed).",
                "Install 'onnxruntime-gpu' instead of 'onnxruntime' (uninstall one before installing the other), "
                "or choose the torch backend.",
            )
        chosen = [TENSORRT] if tensorrt and TENSORRT in have else []
        return [*chosen, CUDA, CPU]
    return [CPU]


@dataclass
class OrtRunner:
    """One component on one ONNX Runtime session.

    Args:
        spec: the component's IO spec.
        session: an `onnxruntime.InferenceSession` of the component's export.
        info: what the export recorded (profile, precision); its profile bounds the accepted shapes.
        path: the ONNX file, for messages.
        device: torch device of the outputs ("cpu" or "cuda:N").
    """

    spec: ComponentSpec
    session: Any
    info: ArtifactInfo
    path: Path
    device: Any
    backend: str = "onnxruntime"
    _input_types: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [i.name for i in self.session.get_inputs()]
        expected = [t.name for t in self.spec.inputs]
        if sorted(names) != sorted(expected):
            raise ModelCorrupt(
                f"{self.path} has inputs {names}, but the {self.spec.name} component takes {expected}.",
                REEXPORT_HINT,
            )
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def profile(self) -> ShapeProfile:
        """The shape profile of the export (what this runner accepts)."""
        return self.info.profile

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        """Run the component.

        Args:
            **inputs: torch tensors named as in the IO spec; floats are cast to the export's dtype.

        Returns:
            Output name → torch tensor on `device`, in the export's float dtype.

        Raises:
            InvalidInput: a missing input or a shape outside the spec or the export's profile.
            OutOfMemory: the runtime could not allocate its buffers.
        """
        import torch

        inputs = coerce_inputs(self.spec, inputs)
        shapes = {k: tuple(v.shape) for k, v in inputs.items()}
        dims = check_shapes(self.spec, shapes, self.info.profile, artifact=self.path.name)
        feeds = {t.name: self._prepare(t.name, inputs[t.name]) for t in self.spec.inputs}
        try:
            if feeds and next(iter(feeds.values())).is_cuda:
                return self._run_bound(feeds, dims)
            arrays = {k: v.numpy() for k, v in feeds.items()}
            results = self.session.run([t.name for t in self.spec.outputs], arrays)
        except Exception as exc:
            raise _runtime_error(exc, self.spec.name, self.path) from exc
        return {t.name: torch.from_numpy(r).to(self.device) for t, r in zip(self.spec.outputs, results)}

    def _prepare(self, name: str, tensor: Any) -> Any:
        import torch

        ort_type = self._input_types[name]
        want = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64}.get(ort_type)
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor)
        if want is not None and tensor.dtype != want:
            tensor = tensor.to(want)
        if self.device is not None and torch.device(self.device).type == "cuda":
            tensor = tensor.to(self.device)
        else:
            tensor = tensor.detach().cpu()
        return tensor.contiguous()

    def _run_bound(self, feeds: Mapping[str, Any], dims: Mapping[str, int]) -> dict[str, Any]:
        """CUDA path: bind torch CUDA inputs and pre-allocated torch outputs (no host copies)."""
        import numpy as np
        import torch

        binding = self.session.io_binding()
        dev = torch.device(self.device)
        index = dev.index or 0
        for name, t in feeds.items():
            binding.bind_input(name, "cuda", index, _np_dtype(t.dtype), tuple(t.shape), t.data_ptr())
        out_dtype = torch.float16 if self.info.precision == "fp16" else torch.float32
        outputs = {}
        for t in self.spec.outputs:
            buf = torch.empty(output_shape(t, dims), dtype=out_dtype, device=dev)
            binding.bind_output(t.name, "cuda", index, np.float16 if out_dtype == torch.float16 else np.float32,
                                tuple(buf.shape), buf.data_ptr())
            outputs[t.name] = buf
        # ORT runs on its own stream; make sure the caller's pending kernels that wrote the inputs are done.
        torch.cuda.current_stream(dev).synchronize()
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outputs


def _np_dtype(dtype: Any) -> Any:
    import numpy as np
    import torch

    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]


def _runtime_error(exc: Exception, component: str, path: Path) -> Exception:
    text = str(exc)
    if "bad_alloc" in text or "Failed to allocate memory" in text or "out of memory" in text.lower():
        return OutOfMemory(f"ONNX Runtime ran out of memory running {component} ({path.name}).",
                           "Use a smaller image or batch, or close other programs using the GPU.")
    return InvalidInput(f"ONNX Runtime could not run {component} ({path.name}): {text.splitlines()[0] if text else exc!r}")


def open_session(path: str | os.PathLike[str], providers: Sequence[str], *, threads: int = 0) -> Any:
    """An InferenceSession with clear errors for a damaged file or a missing onnxruntime.

    Raises:
        BackendUnavailable: onnxruntime is not installed (or both CPU and GPU packages are, see select).
        ModelCorrupt: the file cannot be parsed or its external data is missing/short.
    """
    conflict = onnxruntime_conflict()
    if conflict:
        raise BackendUnavailable(conflict, "Uninstall one of them (pip uninstall onnxruntime), then restart.")
    try:
        import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:
        raise BackendUnavailable(
            "ONNX Runtime is not installed.", "Install 'onnxruntime' (CPU) or 'onnxruntime-gpu' (NVIDIA), not both."
        ) from exc
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # Idle ORT workers busy-wait by default; in a desktop app that alternates ORT calls with torch
    # (scheduler, previews) and the GUI, the spinning threads steal the cores the others need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises Fail/InvalidProtobuf/RuntimeException for damaged files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelCorrupt(f"ONNX Runtime cannot load {path}: it is damaged or not an ONNX model ({first}).",
                           REEXPORT_HINT) from exc


class OrtRunners(OrtControls):
    """Runners for the components exported into one folder (`<component>.onnx` + sidecar each).

    Sessions open on first use and stay open. Components that have no export here are taken from
    `fallback` (e.g. torch runners for a component not worth exporting), if one is given.

    Args:
        onnx_dir: the folder with the exports.
        device: "cpu" or "cuda[:N]".
        tensorrt_ep: put ONNX Runtime's TensorRT execution provider first where it is available.
        weights: current weights per role (sha256), to refuse exports made from other weights.
        fallback: runners for components that are not exported.
        threads: CPU threads per session (0: ONNX Runtime's default).
        providers: explicit provider list (overrides device/tensorrt_ep); for tests and experts.
        check_files: refuse an export whose recorded weight files changed on disk since (size and
            mtime first, a re-hash only when they differ).
    """

    backend = "onnxruntime"

    def _graph_runner(self, spec: Any, target: Path, info: Any) -> Any:
        session = open_session(target, self.providers, threads=self.threads)
        return OrtRunner(spec, session, info, target, self.device)
    def __init__(
        self,
        onnx_dir: str | os.PathLike[str],
        device: str = "cpu",
        *,
        tensorrt_ep: bool = False,
        weights: Mapping[str, str] | Sequence[WeightSource] | None = None,
        fallback: Any = None,
        threads: int = 0,
        providers: Sequence[str] | None = None,
        check_files: bool = True,
    ) -> None:
        import torch

        self.onnx_dir = Path(onnx_dir)
        self.providers = list(providers) if providers is not None else providers_for(device, tensorrt=tensorrt_ep)
        self.device = torch.device(device if CUDA in self.providers or TENSORRT in self.providers else "cpu")
        self.weights = weights
        self.check_files = check_files
        self.fallback = fallback
        self.threads = threads
        self._runners: dict[str, Runner] = {}
        self.dtype = self._read_dtype()

    def _read_dtype(self) -> Any:
        import torch

        # The float dtype the pipeline should hand over: the UNet's export decides when present.
        for name in ("unet", "vae_decoder", "text_encoder", *IO_SPEC):
            p = self.onnx_dir / onnx_file_name(name)
            if p.is_file():
                try:
                    return torch.float16 if read_artifact(p).precision == "fp16" else torch.float32
                except Exception:  # a damaged file is reported when its runner opens, not here
                    break
        return torch.float32

    def available(self) -> list[str]:
        """Components that have an export in the folder, or a runner in the fallback."""
        extra = self.fallback.available() if self.fallback is not None else []
        return [c for c in IO_SPEC if (self.onnx_dir / onnx_file_name(c)).is_file() or c in extra]

    def get(self, component: str) -> Runner:
        """The runner of `component` (the UNet routed per call for ControlNet/FreeU/LoRA, see ort_controls).

        Raises as `_base_get`, and BackendUnavailable when the export lacks what a request needs.
        """
        routed = self.routed(component)
        return routed if routed is not None else self._base_get(component)

    def _base_get(self, component: str) -> Runner:
        """The runner of `component`, opening its session on first use.

        Raises:
            ModelMissing: no export of it here and no fallback.
            ModelCorrupt, EngineMismatch: see `engine.backends.artifacts.read_artifact`; stale weights.
            BackendUnavailable: onnxruntime missing or installed twice.
        """
        if component in self._runners:
            return self._runners[component]
        if component not in IO_SPEC:
            raise KeyError(component)
        path = self.onnx_dir / onnx_file_name(component)
        if not path.is_file() and self.fallback is not None:
            log.info("%s has no ONNX export in %s; using the %s backend for it", component, self.onnx_dir,
                     getattr(self.fallback, "backend", "fallback"))
            runner = self.fallback.get(component)
        else:
            if not path.is_file():
                raise ModelMissing(f"There is no ONNX export of {component} in {self.onnx_dir} ({path.name}).",
                                   REEXPORT_HINT)
            info = read_artifact(path, component)
            if self.weights:
                check_up_to_date(path, info, self.weights)
            if self.check_files:
                changed = changed_weight_files(info)
                if changed:
                    raise EngineMismatch(
                        f"{path.name} is stale: the {', '.join(changed)} weights it was exported from have changed.",
                        REEXPORT_HINT,
                    )
            session = open_session(path, self.providers, threads=self.threads)
            runner = OrtRunner(IO_SPEC[component], session, info, path, self.device)
        self._runners[component] = runner
        return runner

    def close(self) -> None:
        self._runners.clear()
