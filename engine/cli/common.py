"""Helpers shared by the subcommands: building the config and the session from parsed arguments."""

from __future__ import annotations

import argparse
from typing import Any

from engine.config import EngineConfig


def config_from_args(args: argparse.Namespace, **overrides: str) -> EngineConfig:
    from engine.manifest import resolve_models_dir

    models_dir, _why = resolve_models_dir(getattr(args, "models_dir", None))
    fields: dict[str, Any] = {"models_dir": models_dir, "device": getattr(args, "device", "auto") or "auto",
              "backend": getattr(args, "backend", "auto") or "auto"}
    fields.update({k: v for k, v in overrides.items() if v})
    return EngineConfig(**fields)


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """`--backend torch|onnxruntime|tensorrt|auto` (exports in <models>/onnx; see docs/EXPORT.md)."""
    parser.add_argument(
        "--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), default="auto",
        help="which backend runs the networks (default auto: TensorRT, then ONNX Runtime when the exports in "
             "<models>/onnx exist, else torch); a backend that cannot run here falls back and says why",
    )
