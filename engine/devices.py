"""The one device/dtype resolver: config strings ("auto", "cuda:1", "float16") → torch objects.

Every part of the engine that places weights (the SD pipeline, e4e, the face parser, the StyleGAN2
preview, exports) resolves its device here, so they agree: "auto" picks CUDA when available, and an
explicit CUDA device on a machine without CUDA is refused with a message instead of failing later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import BackendUnavailable

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Turn config strings into a torch device and dtype.

    "auto" device: CUDA if available, else CPU. "auto" dtype: float16 on CUDA, float32 on CPU.

    Raises:
        BackendUnavailable: CUDA requested but not available, an unknown device, or an unknown dtype.
    """
    import torch

    if device in ("", "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise BackendUnavailable(f"Unknown device '{device}'.", "Use cpu, cuda, cuda:N or auto.") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"The device '{device}' was requested but CUDA is not available in this build of PyTorch "
                f"({torch.__version__}).",
                "Use --device cpu, or install a CUDA build of PyTorch and an NVIDIA driver.",
            )
    if dtype in ("", "auto"):
        dt = torch.float16 if dev.type == "cuda" else torch.float32
    elif dtype in DTYPES:
        dt = getattr(torch, dtype)
    else:
        raise BackendUnavailable(f"Unknown dtype '{dtype}'.", f"Use one of {', '.join(DTYPES)} or auto.")
    return dev, dt
