"""Engine configuration: a frozen value passed down from the composition root (no module globals)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EngineConfig:
    """Where models live and how to run them.

    Args:
        models_dir: the models folder the user fills (see `engine.manifest` for the layout).
        device: "cpu", "cuda", "cuda:1", … ("auto" picks CUDA when available).
        dtype: "float32", "float16" or "bfloat16" ("auto": fp16 on CUDA, fp32 on CPU).
        backend: "torch", "onnxruntime" or "tensorrt" ("auto" picks the fastest that works).
        sd_model: path (absolute or relative to models_dir) of the SD1.5 folder or single file;
            empty means the manifest's default.
        vae: optional separate VAE (the official notebook uses sd-vae-ft-mse).
        channels_last: NHWC UNet/VAE on CUDA (ignored on the CPU).
        compile: torch.compile the UNet and VAE decoder (first render of each size compiles, minutes).
        compile_mode: the inductor mode used when `compile` is on.
        cuda_graph: replay the UNet step from CUDA graphs (CUDA only; falls back to eager on failure).
    """

    models_dir: Path = field(default_factory=lambda: Path("models"))
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    sd_model: str = ""
    vae: str = ""
    e4e: str = ""
    adapter: str = ""
    parser: str = ""
    psfrgan: str = ""  # PSFRGAN restoration generator (optional)
    cache_dir: Path | None = None
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "max-autotune-no-cudagraphs"
    cuda_graph: bool = False

    def resolve(self, name: str) -> Path:
        """A configured path: absolute as is, else relative to the models folder."""
        p = Path(os.path.expanduser(name))
        return p if p.is_absolute() else self.models_dir / p
