"""Reading and writing W+ codes: our `.npy` files and the official `.pth` files (CUDA-saved tensors)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from engine.api import validate_wplus
from engine.errors import InvalidInput

WPLUS_SUFFIXES = (".npy", ".pth", ".pt")


def read_wplus(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a W+ code as float32 1×18×512.

    Args:
        path: `.npy` (no pickles allowed) or an official `.pth`/`.pt` tensor file (loaded with
            `weights_only=True` on the CPU; the official files were saved from CUDA with requires_grad).

    Raises:
        InvalidInput: missing file, unknown type, wrong shape or non-finite values.
        UnsafeCheckpoint, ModelCorrupt: a `.pth` that carries code or is damaged.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"W+ file not found: {p}.")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{p} is not a readable .npy array ({exc}).") from exc
    elif suffix in (".pth", ".pt"):
        from engine.models.safe_load import load_tensor_file

        arr = load_tensor_file(p).detach().to("cpu").float().numpy()
    else:
        raise InvalidInput(f"{p} is not a W+ file.", "Use a .npy written by `wplus encode` or an official .pth.")
    return validate_wplus(arr, what=f"The W+ in {p.name}")


def write_wplus(path: str | os.PathLike[str], wplus: np.ndarray) -> Path:
    """Write a W+ code atomically as a float32 1×18×512 `.npy` file.

    Raises:
        InvalidInput: the target is not a `.npy` file or the W+ is invalid.
        StorageError: the file could not be written.
    """
    from engine.fileio import atomic_write_bytes

    p = Path(path)
    if p.suffix.lower() != ".npy":
        raise InvalidInput(f"W+ output must be a .npy file, got {p.name}.",
                           ".npy is read by every W+ Studio tool and needs no pickle.")
    buf = io.BytesIO()
    np.save(buf, validate_wplus(wplus), allow_pickle=False)
    atomic_write_bytes(p, buf.getvalue())
    return p
