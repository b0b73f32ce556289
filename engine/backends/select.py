"""Which backends work here, which one to use, and why: probe, pick, fall back explicitly.

`probe()` looks without side effects (no CUDA context is created for ONNX Runtime or TensorRT; torch's
CUDA query is the only one that touches the driver). `choose()` turns a requested backend into the
one that will run, with the reason for any fallback written for the user; the GUI's backend selector
shows `BackendReport.lines()` and `BackendChoice.message`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.backends.base import onnx_file_name
from engine.backends.packages import installed_distributions, normalise, onnxruntime_conflict
from engine.errors import BackendUnavailable, EngineError

BACKENDS = ("torch", "onnxruntime", "tensorrt")
REQUESTS = ("auto", *BACKENDS)


@dataclass(frozen=True)
class BackendStatus:
    """One backend's availability here.

    Args:
        name: "torch", "onnxruntime" or "tensorrt".
        available: it can run here (on some device).
        reason: why not, or what it will use (shown to the user).
        devices: devices it can use ("cpu", "cuda").
        version: the package version, "" if not installed.
    """

    name: str
    available: bool
    reason: str
    devices: tuple[str, ...] = ()
    version: str = ""


@dataclass(frozen=True)
class BackendReport:
    """What `probe()` found."""

    statuses: tuple[BackendStatus, ...]
    cuda: bool = False
    gpu_name: str = ""
    compute_capability: str = ""
    ort_providers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def status(self, name: str) -> BackendStatus:
        for s in self.statuses:
            if s.name == name:
                return s
        raise KeyError(name)

    def lines(self) -> list[str]:
        """One line per backend (and warnings), for the GUI selector and `wplus info`."""
        out = []
        for s in self.statuses:
            mark = "available" if s.available else "unavailable"
            ver = f" {s.version}" if s.version else ""
            out.append(f"{s.name}{ver}: {mark} — {s.reason}")
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


@dataclass(frozen=True)
class BackendChoice:
    """The backend that will run, on which device, and why if it is not the one asked for."""

    requested: str
    backend: str
    device: str
    fallback_reasons: tuple[str, ...] = ()
    report: BackendReport | None = field(default=None, compare=False)

    @property
    def fell_back(self) -> bool:
        return bool(self.fallback_reasons)

    @property
    def message(self) -> str:
        """For the status bar: what runs, and why it is not what was asked for."""
        head = f"Running on {self.backend} ({self.device})"
        if not self.fallback_reasons:
            return head + "."
        return f"{head} instead of {self.requested}: " + " ".join(self.fallback_reasons)


def _version(dist: str, distributions: set[str]) -> str:
    if dist not in distributions:
        return ""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def probe(distributions: Iterable[str] | None = None, *, check_torch_cuda: bool = True) -> BackendReport:
    """Find out which backends can run here.

    Args:
        distributions: installed distribution names (default: importlib.metadata); tests pass a list.
        check_torch_cuda: ask torch whether CUDA works (initialises the driver once).

    Returns:
        Per-backend availability with reasons, GPU facts and warnings (e.g. two ONNX Runtimes).
    """
    dists = {normalise(d) for d in (installed_distributions() if distributions is None else distributions)}
    warnings: list[str] = []

    cuda, gpu, cc = False, "", ""
    torch_status: BackendStatus
    if importlib.util.find_spec("torch") is None:
        torch_status = BackendStatus("torch", False, "PyTorch is not installed.")
    else:
        import torch

        if check_torch_cuda and torch.cuda.is_available():
            cuda = True
            gpu = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            cc = f"{major}.{minor}"
            torch_status = BackendStatus("torch", True, f"CUDA on {gpu}.", ("cuda", "cpu"), torch.__version__)
        else:
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            torch_status = BackendStatus("torch", True, f"CPU only ({why}).", ("cpu",), torch.__version__)

    conflict = onnxruntime_conflict(dists)
    providers: tuple[str, ...] = ()
    if conflict:
        warnings.append(conflict)
        ort_status = BackendStatus("onnxruntime", False, conflict)
    elif importlib.util.find_spec("onnxruntime") is None:
        ort_status = BackendStatus("onnxruntime", False, "ONNX Runtime is not installed (pip install onnxruntime, "
                                   "or onnxruntime-gpu for NVIDIA GPUs).")
    else:
        import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

        providers = tuple(ort.get_available_providers())
        devices = ("cuda", "cpu") if "CUDAExecutionProvider" in providers else ("cpu",)
        where = "CUDA and CPU" if "cuda" in devices else "CPU only (install onnxruntime-gpu for CUDA)"
        extra = "; its TensorRT provider is present" if "TensorrtExecutionProvider" in providers else ""
        ort_status = BackendStatus("onnxruntime", True, f"{where}{extra}.", devices, ort.__version__)

    trt_status = _probe_tensorrt(cuda, check_torch_cuda)
    return BackendReport((torch_status, ort_status, trt_status), cuda, gpu, cc, providers, tuple(warnings))


def _probe_tensorrt(cuda: bool, checked_cuda: bool) -> BackendStatus:
    if importlib.util.find_spec("tensorrt") is None:
        return BackendStatus("tensorrt", False, "TensorRT is not installed (pip install tensorrt; NVIDIA GPUs only).")
    try:
        import tensorrt as trt  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except Exception as exc:  # a broken install raises OSError/ImportError for missing CUDA libraries
        return BackendStatus("tensorrt", False, f"TensorRT is installed but cannot be imported: {exc}.")
    version = str(getattr(trt, "__version__", ""))
    if int(version.split(".")[0] or 0) < 10:
        return BackendStatus("tensorrt", False, f"TensorRT {version} is too old; version 10 or later is needed.",
                             version=version)
    if not cuda:
        why = "no CUDA GPU is visible to PyTorch" if checked_cuda else "CUDA was not checked"
        return BackendStatus("tensorrt", False, f"TensorRT needs a CUDA GPU through PyTorch ({why}).", version=version)
    return BackendStatus("tensorrt", True, "ready; engines are built once per GPU from the ONNX exports.",
                         ("cuda",), version)


def choose(
    requested: str = "auto",
    report: BackendReport | None = None,
    *,
    device: str = "auto",
    onnx_dir: str | Path | None = None,
    components: Sequence[str] = ("unet",),
) -> BackendChoice:
    """Pick the backend that will run.

    "auto" takes TensorRT when it works and ONNX exports exist, else ONNX Runtime when exports exist
    (on CUDA only with its CUDA provider), else torch. An explicit request that cannot be met falls
    back in the order tensorrt → onnxruntime → torch, and each step says why.

    Args:
        requested: "auto", "torch", "onnxruntime" or "tensorrt".
        report: from `probe()` (probed now if None).
        device: "auto", "cpu" or "cuda[:N]".
        onnx_dir: the folder with the ONNX exports (the ONNX-based backends need them).
        components: the exports that must be there for an ONNX-based backend to count as usable
            (the UNet for generation, `face_encoder` for the face chain, …).

    Returns:
        The choice with its fallback reasons (empty when the request was met).

    Raises:
        ValueError: an unknown backend name.
    """
    if requested not in REQUESTS:
        raise ValueError(f"unknown backend {requested!r}; choose {', '.join(REQUESTS)}")
    report = report or probe()
    want_cuda = device.startswith("cuda") or (device == "auto" and report.cuda)
    if device.startswith("cuda") and not report.cuda:
        dev = "cpu"
        reasons = [f"No CUDA GPU is available, so {device} is not possible; using the CPU."]
    else:
        dev = (device if device.startswith("cuda") else "cuda") if want_cuda else "cpu"
        reasons = []
    missing = [c for c in components if onnx_dir is None or not Path(onnx_dir, onnx_file_name(c)).is_file()]
    exports = onnx_dir is not None and not missing
    if onnx_dir is None:
        no_exports = "no ONNX export folder is configured"
    elif len(missing) == len(components) and len(components) > 1:
        no_exports = f"there are no ONNX exports in {onnx_dir}"
    else:
        no_exports = f"there is no ONNX export of {', '.join(missing)} in {onnx_dir}"
    no_exports += f" (export {'them' if len(missing) > 1 else 'it'} with: python -m export onnx …)."

    def ort_ok() -> str | None:
        s = report.status("onnxruntime")
        if not s.available:
            return s.reason
        if not exports:
            return "ONNX Runtime needs exported models: " + no_exports
        if dev.startswith("cuda") and "cuda" not in s.devices:
            return "ONNX Runtime here is CPU-only; install onnxruntime-gpu (and uninstall onnxruntime) for CUDA."
        return None

    def trt_ok() -> str | None:
        s = report.status("tensorrt")
        if not s.available:
            return s.reason
        if not dev.startswith("cuda"):
            return "TensorRT runs on CUDA GPUs only."
        if not exports:
            return "TensorRT engines are built from ONNX exports: " + no_exports
        return None

    if requested == "auto":
        if dev.startswith("cuda") and trt_ok() is None:
            return BackendChoice(requested, "tensorrt", dev, tuple(reasons), report)
        if ort_ok() is None:
            return BackendChoice(requested, "onnxruntime", dev, tuple(reasons), report)
        return BackendChoice(requested, "torch", dev, tuple(reasons), report)

    order = BACKENDS[BACKENDS.index(requested):: -1]  # e.g. tensorrt → onnxruntime → torch
    checks = {"tensorrt": trt_ok, "onnxruntime": ort_ok, "torch": lambda: None if report.status("torch").available
              else report.status("torch").reason}
    for name in order:
        why = checks[name]()
        if why is None:
            return BackendChoice(requested, name, dev, tuple(reasons), report)
        reasons.append(f"{name} is unavailable: {why}")
    raise BackendUnavailable("No backend can run here. " + " ".join(reasons), "Install PyTorch (pip install torch).")


# Components the generation pipeline calls; opened eagerly so a damaged or stale export is found at
# load time (and fallen back from), not in the middle of a render.
PIPELINE_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "identity_proj")


def onnx_dir_for(config: Any) -> Path:
    """Where the app looks for ONNX exports: `<models>/onnx`."""
    return Path(config.models_dir) / "onnx"


def engine_cache_for(config: Any) -> Path:
    """Where TensorRT engines are kept: `<cache_dir or models>/engines`."""
    return Path(config.cache_dir or config.models_dir) / "engines"


def open_runners(
    config: Any,
    torch_runners: Callable[[], Any],
    *,
    report: BackendReport | None = None,
    components: Sequence[str] = PIPELINE_COMPONENTS,
    required: Sequence[str] | None = None,
    partial: bool = False,
    allow_build: bool = False,
    progress: Callable[[str, float], None] | None = None,
) -> tuple[Any, BackendChoice]:
    """Runners of the configured backend, falling back (and saying why) when it cannot open.

    Args:
        config: an EngineConfig (backend, device, models_dir, cache_dir).
        torch_runners: builds the torch runners (loads the PyTorch models); called only when torch
            runs, or as the fallback for components without an export.
        report: a `probe()` result (probed now if None).
        components: opened eagerly to find damaged/stale exports now.
        required: the exports without which an ONNX-based backend is not even tried (default:
            `components`).
        partial: components without an export (other than `components`) run on torch: the torch
            runners are built once, up front, as the exported backend's fallback, so building them must
            be cheap (load lazily, as `TorchModuleRunners` does).
        allow_build: let TensorRT build missing engines now (minutes); otherwise a missing engine is
            a reason to fall back.
        progress: TensorRT build progress.

    Returns:
        (runners, the choice with every fallback reason).
    """
    choice = choose(config.backend or "auto", report, device=config.device or "auto", onnx_dir=onnx_dir_for(config),
                    components=tuple(components if required is None else required))
    reasons = list(choice.fallback_reasons)
    order = [b for b in ("tensorrt", "onnxruntime", "torch") if BACKENDS.index(b) <= BACKENDS.index(choice.backend)]
    fallback = torch_runners() if partial and choice.backend != "torch" else None
    runners: Any
    for name in order:
        if name == "torch":
            runners = fallback if fallback is not None else torch_runners()
            return runners, BackendChoice(choice.requested, "torch", choice.device, tuple(reasons), choice.report)
        try:
            if name == "tensorrt":
                from engine.backends.trt_backend import TrtRunners

                runners = TrtRunners(onnx_dir_for(config), engine_cache_for(config), device=choice.device,
                                          allow_build=allow_build, progress=progress, fallback=fallback)
            else:
                from engine.backends.ort_backend import OrtRunners

                runners = OrtRunners(onnx_dir_for(config), choice.device, fallback=fallback)
            for c in components:
                runners.get(c)
        except EngineError as exc:
            reasons.append(f"{name} could not open the exported models: {exc.user_message}")
            continue
        return runners, BackendChoice(choice.requested, name, choice.device, tuple(reasons), choice.report)
    raise AssertionError("unreachable: torch is always last")
