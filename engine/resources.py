"""Locate files shipped in `resources/` (directions, configs, tokenizer, icons), also inside a PyInstaller bundle."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_root() -> Path:
    """The `resources/` folder: beside `engine/` in a checkout, under `sys._MEIPASS` in a frozen app."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parents[1] / "resources"


def resource_path(*parts: str) -> Path:
    """Path of a shipped resource, e.g. `resource_path("directions", "interfacegan", "age.npy")`.

    The path is not checked for existence; callers report a missing resource in their own terms.
    """
    return resources_root().joinpath(*parts)
