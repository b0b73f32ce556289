"""ONNX exports → TensorRT engines in the engine cache (the CLI side of `engine.backends.trt_build`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.backends.profiles import ShapeProfile


def _print_progress(phase: str, fraction: float) -> None:
    print(f"\r  {phase[:60]:<60} {fraction * 100:5.1f}%", end="" if fraction < 1 else "\n", file=sys.stderr)


def build_all(
    onnx_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    profile: ShapeProfile,
    components: Sequence[str],
    *,
    precision: str = "fp16",
    timing_cache: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
) -> list[str]:
    """Build (or find in the cache) an engine per exported component.

    Args:
        onnx_dir: folder with `<component>.onnx` exports; components without one are skipped.
        cache_dir: the engine cache.
        profile: optimization profile (fixed-size components only use its batch range).
        components: which components.
        precision: "fp16" or "fp32".
        timing_cache: shared timing cache file (speeds up later builds).
        rebuild: ignore a matching cached engine.

    Returns:
        One line per component for the user.

    Raises:
        BackendUnavailable: no TensorRT or no CUDA GPU.
        ModelCorrupt, EngineMismatch: from parsing/building.
    """
    from engine.backends.trt_build import EngineCache, GpuInfo, build_engine, engine_key, ensure_engine

    cache = EngineCache(cache_dir)
    gpu = GpuInfo.current()
    lines = []
    for component in components:
        onnx = Path(onnx_dir) / f"{component}.onnx"
        if not onnx.is_file():
            lines.append(f"{component}: skipped (no export at {onnx})")
            continue
        key = engine_key(onnx, component, precision, profile, gpu=gpu)
        if rebuild:
            data = build_engine(onnx, component, profile, precision=precision, timing_cache=timing_cache,
                                progress=_print_progress)
            plan, reasons = cache.store(key, data), []
        else:
            plan, reasons = ensure_engine(cache, onnx, component, profile, precision=precision,
                                          timing_cache=timing_cache, progress=_print_progress, key=key)
        lines.append(f"{component}: {plan}")
        lines.extend(f"  replaced: {r}" for r in reasons)
    return lines
