"""`wplus info`: versions, device, available backends (and why not), the models folder and its contents."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
from typing import Any

_PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "numpy", "onnxruntime", "onnxruntime-gpu",
             "tensorrt", "opencv-python-headless", "dlib-bin", "dlib", "PySide6", "PySide6-Essentials")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("info", help="versions, device, backends and models",
                              description="Show versions, the compute device, which backends work (and why "
                                          "not), and what the models folder holds.")
    p.add_argument("--verify", action="store_true", help="hash model files not hashed before (slow the first time)")
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def info_lines(args: argparse.Namespace) -> list[str]:
    """The report as lines (kept separate from printing so it can be tested)."""
    from engine import __version__

    lines = [f"W+ Studio engine {__version__}", f"Python {sys.version.split()[0]} on {platform.platform()}"]
    lines.append("Packages: " + ", ".join(f"{d} {v}" for d in _PACKAGES if (v := _version(d))))
    try:
        import torch

        threads = torch.get_num_threads()
        if torch.cuda.is_available():
            dev = f"CUDA: {torch.cuda.get_device_name(0)} (torch CUDA {torch.version.cuda})"
        else:
            dev = "CUDA: not available (CPU only)"
        lines.append(f"Device: {dev}; CPU threads {threads} of {os.cpu_count()}")
    except ImportError:
        lines.append("Device: PyTorch is not installed")
    try:
        from engine.backends.select import probe

        lines.append("Backends:")
        lines += [f"  {line}" for line in probe().lines()]
    except ImportError as exc:
        lines.append(f"Backends: cannot probe ({exc})")
    try:
        from engine.cli.common import config_from_args
        from engine.models.folder import resolve_models_dir
        from engine.models.verify import check_models

        models_dir, why = resolve_models_dir(getattr(args, "models_dir", None))
        lines.append(f"Models folder: {models_dir} ({why})")
        for s in check_models(config_from_args(args), verify=bool(getattr(args, "verify", False))):
            need = "required" if s.required else "optional"
            msg = f" — {s.message}" if s.message else ""
            lines.append(f"  {s.id} [{need}]: {s.status.value}{msg}")
    except ImportError as exc:
        lines.append(f"Models: cannot check ({exc})")
    return lines


def run(args: argparse.Namespace) -> int:
    for line in info_lines(args):
        print(line)
    return 0
