"""Options of the torch backend's CUDA fast path, read from `EngineConfig`.

Below both `torch_backend` (which builds runners with them) and `torch_fastpath` (which implements
them), so neither imports the other for the type. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FastPathOptions:
    """Speed features of the torch backend (see the module docstring). Defaults are safe everywhere.

    Args:
        channels_last: NHWC UNet and VAE weights on CUDA (ignored on the CPU, where it would only
            change summation order).
        compile: `torch.compile` the UNet and (with `compile_vae`) the VAE decoder.
        compile_mode: inductor mode ("default", "max-autotune-no-cudagraphs", …). "reduce-overhead"
            makes inductor capture its own CUDA graphs; then leave `cuda_graph` off.
        compile_vae: also compile the VAE decoder when `compile` is on.
        cuda_graph: replay the UNet step from captured CUDA graphs (CUDA only).
        max_graphs: graphs kept (least recently used dropped): each holds its own activation memory.
        compile_backend: the torch.compile backend; "inductor" in the product, "eager" (or a callable)
            in CPU tests, where it proves the wrapping without generating kernels.
    """

    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "max-autotune-no-cudagraphs"
    compile_vae: bool = True
    cuda_graph: bool = False
    max_graphs: int = 4
    compile_backend: Any = "inductor"

    @classmethod
    def from_config(cls, config: Any) -> FastPathOptions:
        """The options an `EngineConfig` asks for (missing fields keep their defaults)."""
        d = cls()
        return cls(
            channels_last=bool(getattr(config, "channels_last", d.channels_last)),
            compile=bool(getattr(config, "compile", d.compile)),
            compile_mode=str(getattr(config, "compile_mode", d.compile_mode) or d.compile_mode),
            cuda_graph=bool(getattr(config, "cuda_graph", d.cuda_graph)),
        )
