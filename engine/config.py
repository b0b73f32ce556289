"""Engine configuration: a frozen value passed down from the composition root (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EngineConfig:
    """Where models live and how to run them.

    Args:
        models_dir: the models folder the user fills (`engine.models.folder` picks it; the layout is in
            `resources/models.toml`).
        device: "cpu", "cuda", "cuda:1", … ("auto" picks CUDA when available).
        dtype: "float32", "float16" or "bfloat16" ("auto": fp16 on CUDA, fp32 on CPU).
        backend: "torch", "onnxruntime" or "tensorrt" ("auto" picks the fastest that works).
        sd_model: path of the SD1.5 folder or single file the user named (absolute, or relative to the
            current directory like any command-line path); empty means the models folder's default.
        vae, e4e, adapter, parser: likewise, a file or folder the user named for that role (the
            official notebook's separate VAE is sd-vae-ft-mse); empty means the models folder's.
        cache_dir: where hashes and conversions go when the models folder cannot be written (default:
            the user cache dir).
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
