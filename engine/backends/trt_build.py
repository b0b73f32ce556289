"""TensorRT engines from the ONNX exports: optimization profiles, fp16, timing cache, and an engine cache.

A TensorRT engine is only valid for the ONNX graph, TensorRT version, GPU model (compute capability)
precision and shape profile it was built for. The cache key holds exactly these; an engine whose
recorded key differs from the current one is never loaded: it is rebuilt (when allowed) or refused
with the difference spelled out ("built on an RTX 3090 (8.6); this GPU is an RTX 4090 (8.9)").

`tensorrt` is imported inside the functions that need it; everything else here (keys, profiles,
cache bookkeeping, messages) works without it and is unit-tested without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.backends.artifacts import read_artifact
from engine.backends.base import IO_SPEC
from engine.backends.profiles import ShapeProfile
from engine.errors import BackendUnavailable, EngineMismatch, ModelCorrupt, ModelMissing

log = logging.getLogger(__name__)

ENGINE_FORMAT = "wplus-trt/1"
PRECISIONS = ("fp32", "fp16")
REBUILD_HINT = "Build it again here: python -m export trt --onnx-dir <folder> (or let the app rebuild it)."
ProgressFn = Callable[[str, float], None]  # (phase description, fraction 0..1 of the top phase)


@dataclass(frozen=True)
class EngineKey:
    """Everything a TensorRT engine depends on.

    Args:
        component: the IO spec name.
        onnx_sha256: hash of the ONNX files it is built from (graph and external data, recorded at export).
        trt_version: TensorRT version, e.g. "10.7.0".
        gpu_name: e.g. "NVIDIA GeForce RTX 4090".
        compute_capability: e.g. "8.9".
        precision: "fp32" or "fp16".
        profile: `ShapeProfile.key()` of the optimization profile.
    """

    component: str
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: str

    def digest(self) -> str:
        """A short stable hash of the key (file names)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def file_name(self) -> str:
        return f"{self.component}-{self.precision}-{self.digest()}.plan"

    def mismatches(self, current: EngineKey) -> list[str]:
        """Why an engine built under `self` cannot run under `current` (empty: it can)."""
        out = []
        if self.component != current.component:
            out.append(f"it is the {self.component} engine, not {current.component}")
        if (self.gpu_name, self.compute_capability) != (current.gpu_name, current.compute_capability):
            out.append(
                f"it was built on {self.gpu_name} (compute capability {self.compute_capability}); "
                f"this GPU is {current.gpu_name} ({current.compute_capability})"
            )
        if self.trt_version != current.trt_version:
            out.append(f"it was built with TensorRT {self.trt_version}; TensorRT {current.trt_version} is installed")
        if self.onnx_sha256 != current.onnx_sha256:
            out.append("the ONNX export it was built from has changed (re-exported or other weights)")
        if self.precision != current.precision:
            out.append(f"it is {self.precision}; {current.precision} was asked for")
        if self.profile != current.profile:
            out.append(f"it was built for shapes {self.profile}; {current.profile} was asked for")
        return out


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is for."""

    name: str
    compute_capability: str

    @classmethod
    def current(cls, device: int = 0) -> GpuInfo:
        """The CUDA device as torch sees it.

        Raises:
            BackendUnavailable: no CUDA device.
        """
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT needs an NVIDIA GPU with CUDA; none is available.",
                                     "Use the torch or ONNX Runtime backend.")
        major, minor = torch.cuda.get_device_capability(device)
        return cls(torch.cuda.get_device_name(device), f"{major}.{minor}")


def tensorrt_module() -> Any:
    """Import tensorrt (≥ 10).

    Raises:
        BackendUnavailable: not installed, broken, or older than 10.
    """
    try:
        import tensorrt as trt  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed.", "pip install tensorrt (NVIDIA GPUs only), or use "
                                 "the torch or ONNX Runtime backend.") from exc
    except OSError as exc:  # missing CUDA libraries
        raise BackendUnavailable(f"TensorRT is installed but cannot load its libraries: {exc}.",
                                 "Install the CUDA runtime matching your TensorRT wheel.") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old; version 10 or later is needed.",
                                 "pip install --upgrade tensorrt")
    return trt


def engine_key(
    onnx_path: str | os.PathLike[str],
    component: str,
    precision: str,
    profile: ShapeProfile,
    *,
    trt_version: str | None = None,
    gpu: GpuInfo | None = None,
) -> EngineKey:
    """The cache key for building `component` from `onnx_path` here.

    Args:
        onnx_path: the export (its sidecar gives the ONNX hash without re-reading gigabytes).
        component: IO spec name.
        precision: "fp32" or "fp16" (TensorRT's FP16 flag; the ONNX may be fp32).
        profile: the optimization profile.
        trt_version, gpu: the runtime facts (default: the installed TensorRT and CUDA device 0).

    Raises:
        ValueError: an unknown precision.
        ModelMissing, ModelCorrupt, EngineMismatch: the export is missing, damaged or of another component.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    info = read_artifact(onnx_path, component)
    if trt_version is None:
        trt_version = str(tensorrt_module().__version__)
    gpu = gpu or GpuInfo.current()
    return EngineKey(component, info.files_digest(), trt_version, gpu.name, gpu.compute_capability, precision,
                     profile.key())


def profile_shapes(component: str, profile: ShapeProfile) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max shape per input of `component` for `IOptimizationProfile.set_shape`."""
    return {k: v for k, v in profile.input_ranges(IO_SPEC[component]).items()}


class EngineCache:
    """A folder of engines `<component>-<precision>-<digest>.plan`, each with a `.plan.json` of its key.

    Args:
        root: the cache folder (created on first store).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_for(self, key: EngineKey) -> Path:
        return self.root / key.file_name()

    def record_path(self, plan: Path) -> Path:
        return plan.with_name(plan.name + ".json")

    def recorded_key(self, plan: str | os.PathLike[str]) -> EngineKey:
        """The key an engine was built under.

        Raises:
            ModelCorrupt: the record is missing or unreadable.
        """
        rec = self.record_path(Path(plan))
        try:
            data = json.loads(rec.read_text(encoding="utf-8"))
            if data.get("format") != ENGINE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return EngineKey(**data["key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelCorrupt(f"The TensorRT engine {plan} has no readable build record ({rec.name}): {exc}.",
                               REBUILD_HINT) from exc

    def check(self, plan: str | os.PathLike[str], current: EngineKey) -> None:
        """Refuse an engine built for other conditions.

        Raises:
            ModelMissing: no such engine file.
            ModelCorrupt: the build record is missing or damaged, or the file size changed.
            EngineMismatch: another GPU, TensorRT version, ONNX, precision or profile (all reasons listed).
        """
        p = Path(plan)
        if not p.is_file():
            raise ModelMissing(f"There is no TensorRT engine at {p}.", REBUILD_HINT)
        recorded = self.recorded_key(p)
        data = json.loads(self.record_path(p).read_text(encoding="utf-8"))
        if int(data.get("size", -1)) not in (-1, p.stat().st_size):
            raise ModelCorrupt(f"The TensorRT engine {p} is truncated or was replaced (size differs from its "
                               "build record).", REBUILD_HINT)
        reasons = recorded.mismatches(current)
        if reasons:
            raise EngineMismatch(f"The TensorRT engine {p.name} cannot be used here: " + "; ".join(reasons) + ".",
                                 REBUILD_HINT)

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for `key`, or None (a damaged entry counts as absent)."""
        p = self.path_for(key)
        try:
            self.check(p, key)
        except (ModelMissing, ModelCorrupt, EngineMismatch):
            return None
        return p

    def stale_reasons(self, key: EngineKey) -> list[str]:
        """For engines of the same component that do not match `key`: why (to tell the user on rebuild)."""
        reasons: list[str] = []
        for rec in sorted(self.root.glob(f"{key.component}-*.plan.json")):
            plan = rec.with_name(rec.name[: -len(".json")])
            try:
                old = self.recorded_key(plan)
            except ModelCorrupt as exc:
                reasons.append(exc.user_message)
                continue
            why = old.mismatches(key)
            if why:
                reasons.append(f"{plan.name}: " + "; ".join(why))
        return reasons

    def store(self, key: EngineKey, data: bytes, *, seconds: float = 0.0) -> Path:
        """Write an engine and its build record atomically."""
        from engine.fileio import atomic_write_bytes

        p = self.path_for(key)
        atomic_write_bytes(p, data)
        record = {"format": ENGINE_FORMAT, "key": asdict(key), "size": len(data), "build_seconds": round(seconds, 1)}
        atomic_write_bytes(self.record_path(p), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        return p


def _progress_monitor(trt: Any, progress: ProgressFn) -> Any | None:
    """An IProgressMonitor forwarding to `progress` (None on TensorRT builds without the interface)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # type: ignore[misc]  # TensorRT's pybind base wants this explicit call
            self.steps: dict[str, int] = {}
            self.top: str | None = None

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = max(int(num_steps), 1)
            if parent_phase is None:
                self.top = phase_name
            progress(phase_name, 0.0)

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name == self.top:
                progress(phase_name, (step + 1) / self.steps.get(phase_name, 1))
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            if phase_name == self.top:
                progress(phase_name, 1.0)
            self.steps.pop(phase_name, None)

    return _Monitor()


def build_engine(
    onnx_path: str | os.PathLike[str],
    component: str,
    profile: ShapeProfile,
    *,
    precision: str = "fp16",
    timing_cache: str | os.PathLike[str] | None = None,
    workspace_bytes: int = 8 << 30,
    refit: bool = True,
    progress: ProgressFn | None = None,
) -> bytes:
    """Build a serialized engine from an ONNX export with the TensorRT 10 Python API.

    Args:
        onnx_path: the export (external data is read from beside it).
        component: IO spec name; its inputs get the profile's min/opt/max shapes.
        profile: the optimization profile.
        precision: "fp16" sets BuilderFlag.FP16 (layers TensorRT keeps in fp32 stay so); "fp32" doesn't.
        timing_cache: a file to read/update so later builds skip kernel timing.
        workspace_bytes: the builder's workspace pool limit.
        refit: build refittable engines (weights can be swapped without a rebuild).
        progress: receives (phase, fraction) from an IProgressMonitor.

    Returns:
        The serialized engine.

    Raises:
        BackendUnavailable: no TensorRT.
        ModelCorrupt: the parser rejected the ONNX file (its errors are listed).
        EngineMismatch: the build failed (e.g. unsupported op or out of memory); the log says more.
    """
    trt = tensorrt_module()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelCorrupt(f"TensorRT cannot parse {onnx_path}: " + "; ".join(errors[:3]),
                           "Re-export the ONNX file; check that its .data file sits next to it.")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(component, profile).items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    monitor = _progress_monitor(trt, progress) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineMismatch(f"TensorRT could not build an engine for {component} from {onnx_path}.",
                             "See the log above; try fp32, a smaller profile, or the ONNX Runtime backend.")
    if timing_cache:
        from engine.fileio import atomic_write_bytes

        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def ensure_engine(
    cache: EngineCache,
    onnx_path: str | os.PathLike[str],
    component: str,
    profile: ShapeProfile,
    *,
    precision: str = "fp16",
    allow_build: bool = True,
    timing_cache: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    key: EngineKey | None = None,
) -> tuple[Path, list[str]]:
    """The engine for this export here: from the cache, or built now.

    Returns:
        The engine file and the reasons old engines of the component were not usable (for the user).

    Raises:
        EngineMismatch: no matching engine and `allow_build` is False (the reasons are in the message).
        Whatever `build_engine` raises.
    """
    import time

    key = key or engine_key(onnx_path, component, precision, profile)
    hit = cache.lookup(key)
    if hit is not None:
        return hit, []
    reasons = cache.stale_reasons(key)
    if not allow_build:
        why = "; ".join(reasons) if reasons else "none has been built for this GPU, TensorRT version and profile"
        raise EngineMismatch(f"No usable TensorRT engine for {component}: {why}.", REBUILD_HINT)
    log.info("building TensorRT engine for %s (%s, %s)", component, precision, profile.name)
    t0 = time.perf_counter()
    data = build_engine(onnx_path, component, profile, precision=precision, timing_cache=timing_cache,
                        progress=progress)
    return cache.store(key, data, seconds=time.perf_counter() - t0), reasons

