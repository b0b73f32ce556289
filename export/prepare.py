"""Make what a backend loads, for a models folder: the ONNX exports (and, for TensorRT, the engines).

The CLI does this step by step (`python -m export onnx`, `… trt`); the bundle's self-test does it in
one call for the tiny models it renders with, so it can render on the backend it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engine.backends.profiles import ShapeProfile
from engine.backends.select import BACKENDS, PIPELINE_COMPONENTS, engine_cache_for, onnx_dir_for
from engine.config import EngineConfig


def prepare_backend(
    config: EngineConfig,
    backend: str,
    profile: ShapeProfile,
    components: Sequence[str] = PIPELINE_COMPONENTS,
    *,
    precision: str = "fp32",
) -> list[str]:
    """Export `components` into `<models>/onnx` (ONNX Runtime) and build their engines (TensorRT).

    Exports already there are replaced; torch needs nothing.

    Args:
        config: the models folder and per-role paths.
        backend: "torch", "onnxruntime" or "tensorrt".
        profile: the shapes the exports (and engines) accept.
        components: which components.
        precision: of the ONNX files ("fp32"/"fp16"); TensorRT engines are built in fp16 from them.

    Returns:
        One line per file made, for the user.

    Raises:
        ValueError: an unknown backend.
        ModelMissing, ModelCorrupt: a model cannot be loaded; ExportFailed: the export failed;
        BackendUnavailable: TensorRT or CUDA is missing.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    if backend == "torch":
        return []
    import torch

    from export.sources import ComponentLoader
    from export.to_onnx import export_onnx

    out = onnx_dir_for(config)
    loader = ComponentLoader(config, torch.float16 if precision == "fp16" else torch.float32)
    lines = []
    for component in components:
        src = loader.load(component)
        result = export_onnx(component, src.module, Path(out) / f"{component}.onnx", profile=profile,
                             precision=precision, weights=src.weights)
        lines.append(f"{component}: {result.path} ({result.seconds:.1f} s)")
    if backend == "tensorrt":
        from export.to_trt import build_all

        cache = engine_cache_for(config)
        lines.extend(build_all(out, cache, profile, components, timing_cache=cache / "timing.cache"))
    return lines
