"""A cheap latent → RGB preview for progress reports (no VAE): a fixed linear map of the 4 SD1.5 channels."""

from __future__ import annotations

from typing import Any

import numpy as np

# Least-squares fit of SD1.5 latent channels (scaled latents, ×0.18215 space) to RGB in [-1, 1]:
# the commonly published "latent_rgb_factors" for SD1.x (rows: latent channel, columns: R, G, B).
SD15_LATENT_RGB = np.array(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    dtype=np.float32,
)
SD15_LATENT_RGB_BIAS = np.zeros(3, dtype=np.float32)


def latent_preview(latents: Any) -> np.ndarray:
    """Map latents (1×4×h×w or 4×h×w, torch or numpy) to a uint8 h×w×3 RGB image at latent resolution."""
    arr = latents.detach().float().cpu().numpy() if hasattr(latents, "detach") else np.asarray(latents, np.float32)
    if arr.ndim == 4:
        arr = arr[0]
    rgb = np.einsum("chw,cd->hwd", arr.astype(np.float32), SD15_LATENT_RGB) + SD15_LATENT_RGB_BIAS
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip((rgb + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
