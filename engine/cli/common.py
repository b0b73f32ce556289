"""Helpers shared by the subcommands: building the config and the session from parsed arguments."""

from __future__ import annotations

import argparse
from typing import Any

from engine.config import EngineConfig

MODELS_DIR_HELP = (
    "models folder (default, first that applies: WPLUS_MODELS_DIR, ./models in the current directory, "
    "a models/ folder beside the application, your user data folder; `wplus models list` says which)"
)


def config_from_args(args: argparse.Namespace, **paths: str) -> EngineConfig:
    """The EngineConfig of the parsed global options, with the model paths the user gave.

    Args:
        paths: EngineConfig path fields (sd_model, vae, e4e, adapter, parser) as typed; relative ones are
            taken from the current directory (made absolute here), empty ones are left to the models folder.
    """
    from engine.models.folder import resolve_models_dir, user_path

    models_dir, _why = resolve_models_dir(getattr(args, "models_dir", None))
    fields: dict[str, Any] = {"models_dir": models_dir, "device": getattr(args, "device", "auto") or "auto",
                              "backend": getattr(args, "backend", "auto") or "auto"}
    fields.update({k: str(user_path(v)) for k, v in paths.items() if v})
    return EngineConfig(**fields)


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """`--backend torch|onnxruntime|tensorrt|auto` (exports in <models>/onnx; see docs/EXPORT.md)."""
    parser.add_argument(
        "--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), default="auto",
        help="which backend runs the networks (default auto: TensorRT, then ONNX Runtime when the exports in "
             "<models>/onnx exist, else torch); a backend that cannot run here falls back and says why",
    )
