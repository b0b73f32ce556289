"""The instant W+ face preview: W+ codes rendered by the e4e checkpoint's StyleGAN2 generator.

Rendering an (edited) W+ through the generator the encoder targets gives the e4e reconstruction right
after capture and a face of every slider position long before Stable Diffusion finishes. This module
is the product around the network (`engine.networks.stylegan2`): preview sizes and the reduced path,
the stage cache for slider drags, the official uint8 conversion and resize, thread safety.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import InvalidInput, ModelMissing
from engine.networks.stylegan2.loader import DISABLED, generator_from_state
from engine.networks.stylegan2.modules import (
    REDUCED_RESOLUTION,
    PreviewModule,
    StyleGAN2Generator,
    preview_module,
)

PREVIEW_SIZES = (64, 128, 256, 512, 1024)  # ≤ 256: reduced paths (that level's RGB skip)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Official `tensor2pil` conversion of one C×H×W float image: clip, (x+1)/2·255, truncate → H×W×3 uint8."""
    arr: np.ndarray = np.asarray(image, dtype=np.float32).transpose(1, 2, 0).copy()
    np.clip(arr, -1.0, 1.0, out=arr)
    arr = (arr + 1) / 2
    arr = arr * 255
    return arr.astype(np.uint8)


def resize_like_official(rgb: np.ndarray, size: int) -> np.ndarray:
    """PIL `.resize((size, size))` with Pillow's default filter (BICUBIC, antialiased when shrinking)."""
    from PIL import Image

    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))



def validate_wplus_for(generator: StyleGAN2Generator, wplus: np.ndarray) -> np.ndarray:
    """`engine.api.validate_wplus` (1×18×512, finite) for the official generator; the generator's
    own 1×n_latent×style_dim for reduced test generators. Raises InvalidInput."""
    from engine.api import WPLUS_SHAPE, validate_wplus

    shape = (1, generator.n_latent, generator.shape.style_dim)
    if shape == WPLUS_SHAPE:
        return validate_wplus(wplus)
    arr = np.asarray(wplus)
    if arr.shape == shape[1:]:
        arr = arr[None]
    if arr.shape != shape or not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise InvalidInput(f"W+ must be a finite float array of shape {shape}, got {arr.shape}.")
    return np.ascontiguousarray(arr, dtype=np.float32)


@dataclass
class _StageCache:
    """States `(x, skip)` after each stage of the last render at one resolution, and its W+."""

    resolution: int
    wplus: np.ndarray
    states: list[tuple[Any, Any]]


class StyleGANPreview:
    """Renders W+ codes with the e4e checkpoint's StyleGAN2 generator (stored noise, no randomness).

    `render(w, 256)` runs the reduced path: it stops after the 256² level and returns that level's RGB
    skip — a cheaper, coarser preview for slider dragging (≈1/5 of the full image's CPU time, though
    60 % of its multiply-adds; the 512²/1024² to_rgb layers that would still add colour and detail are
    skipped; 64 and 128 stop earlier still). 512/1024 run the full 1024² generator and resize like the
    official preview post-processing; `render(w, 256, full=True)` is the official 256² reconstruction
    preview.

    Consecutive reduced-path renders reuse the stages before the first W+ row that changed (exact:
    STYLEGAN2.md §2.1; it holds ≈130 MB of activations, so the full path is not cached). Real edits touch
    rows 0–7 or all 18 rows, so this pays off only for edits of the later rows.

    Thread-safe (one render at a time).
    """

    def __init__(
        self,
        generator: StyleGAN2Generator,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        channels_last: bool | None = None,
        cache: bool = True,
    ) -> None:
        """
        Args:
            generator: a loaded generator (`generator_from_state`).
            device: torch device string.
            dtype: "float32" (faithful, the default) or "bfloat16" (CPU draft mode, ≈2× faster on CPUs
                with AVX512-BF16, up to ~10 grey levels off).
            channels_last: NHWC convs (faster with oneDNN; default on for CPU). Changes results only by
                float rounding (~1e-5).
            cache: keep per-stage activations of the reduced path between renders.
        """
        if dtype not in ("float32", "bfloat16"):
            raise InvalidInput(f"StyleGAN preview dtype must be float32 or bfloat16, got {dtype!r}.")
        self.dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        self.generator = generator.to(device=self.device, dtype=self.dtype)
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.generator.set_memory_format(torch.channels_last if channels_last else None)
        self.cache_enabled = cache
        self._lock = threading.Lock()
        self._cache: _StageCache | None = None

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> StyleGANPreview:
        """Load from an e4e checkpoint (`.pt` or its safetensors conversion) via `load_e4e_checkpoint`.

        The engine gets the preview through the model service (`ModelService.load("stylegan_preview")`),
        which finds the e4e file and converts a pickle first.

        Only the `decoder.*` tensors and `latent_avg` are loaded (a decoder-only file is enough).

        Args:
            path: the e4e file.
            **kwargs: passed to the constructor (device, dtype, channels_last, cache).

        Raises:
            ModelMissing: no file, or a file without `decoder.*` keys (message "preview disabled: …").
            ModelCorrupt: damaged file, or decoder keys/shapes that do not fit ("preview disabled: …").
            UnsafeCheckpoint: a pickle that would run code.
        """
        from engine.networks.e4e import load_e4e_checkpoint

        p = Path(path)
        if not p.is_file():
            raise ModelMissing(
                f"{DISABLED}the e4e checkpoint {p} was not found.",
                "Put e4e_ffhq_encode.pt into the models folder (`wplus models list` shows where).",
            )
        # only the decoder: the 1.07 GB encoder is neither read (safetensors, zip pickles) nor kept
        ckpt = load_e4e_checkpoint(p, parts=("decoder",))
        return cls.from_state_dict(ckpt.decoder_state, **kwargs)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], **kwargs: Any) -> StyleGANPreview:
        """Build from decoder tensors (keys without `decoder.`). Raises as `generator_from_state`."""
        return cls(generator_from_state(state), **kwargs)

    # -- modules -----------------------------------------------------------------------------------
    @property
    def module(self) -> PreviewModule:
        """The reduced-path module for ONNX export: forward(wplus B×18×512) -> image B×3×256×256 float."""
        return preview_module(self.generator, min(REDUCED_RESOLUTION, self.generator.shape.size))

    # -- rendering ---------------------------------------------------------------------------------
    def render_float(self, wplus: np.ndarray, resolution: int) -> np.ndarray:
        """The RGB skip at `resolution` (the full image at the generator size): float32 3×R×R, not clamped.

        Raises:
            InvalidInput: wrong shape, NaN/Inf, or a resolution that is not a level of the generator.
        """
        w = validate_wplus_for(self.generator, wplus)
        stages = self.generator.stages(resolution)
        keep = self.cache_enabled and resolution <= REDUCED_RESOLUTION
        with self._lock, torch.inference_mode():
            start = 0
            cache = self._cache
            if keep and cache is not None and cache.resolution == resolution:
                changed = np.flatnonzero((cache.wplus[0] != w[0]).any(axis=-1))
                first_row = int(changed[0]) if changed.size else self.generator.n_latent
                # rows never decrease along the stages: everything before the first reader of a
                # changed row saw identical inputs
                start = next((i for i, (row, _) in enumerate(stages) if row >= first_row), len(stages))
            states = cache.states[:start] if start and cache is not None else []
            x, skip = states[-1] if states else (None, None)
            wt = torch.from_numpy(w).to(device=self.device, dtype=self.dtype)
            for _row, step in stages[start:]:
                x, skip = step(x, skip, wt)
                if keep:
                    states.append((x, skip))
            self._cache = _StageCache(resolution, w.copy(), states) if keep else None
            assert skip is not None  # every level ends with its to_rgb
            return skip[0].to(device="cpu", dtype=torch.float32).numpy()

    def render(self, wplus: np.ndarray, size: int = 256, *, full: bool = False) -> np.ndarray:
        """Render one W+ as an RGB uint8 image of size×size×3.

        Args:
            wplus: 1×18×512 (or 18×512) float, e.g. an identity's edited W+.
            size: 256 → the reduced path (the 256² level's RGB skip, no resize); 64 or 128 → the
                coarser levels' skips (cheaper still, blurrier); 512 or 1024 → the full 1024² image,
                resized with PIL bicubic like the official preview.
            full: with a size ≤ 256, render the full image and resize it instead (for 256: the
                official reconstruction preview, ≈5× the CPU time of the reduced path).

        Returns:
            uint8 size×size×3 RGB (official conversion: clip to [−1, 1], (x+1)/2·255, truncation).

        Raises:
            InvalidInput: wrong shape, NaN/Inf, or a size not in PREVIEW_SIZES.
        """
        if size not in PREVIEW_SIZES:
            raise InvalidInput(
                f"The preview size must be one of {', '.join(map(str, PREVIEW_SIZES))}, got {size}."
            )
        full_res = self.generator.shape.size
        if size <= REDUCED_RESOLUTION and not full:
            return to_uint8(self.render_float(wplus, min(size, full_res)))
        return resize_like_official(to_uint8(self.render_float(wplus, full_res)), size)

    def clear_cache(self) -> None:
        """Drop the cached activations (memory)."""
        with self._lock:
            self._cache = None
