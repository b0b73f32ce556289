"""Held-out measurements of an adapter (what docs/TRAINING.md reports and the learning tests check).

* `heldout_rec_loss`: L_rec on held-out items with fixed t, ε and VAE posterior draws (same for every adapter).
* `background_change`: mean over held-out stage-2 items of ‖M̄ ⊙ (ε̂(w) − ε̂(w_swap))‖² — how much swapping the
  identity changes the prediction outside the face (what L_disen trains down).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.training.data import TrainDataset
from engine.training.objectives import add_noise, ddpm_alphas_cumprod, predict_noise


def _batch(ds: TrainDataset, comps: Any, seed: int) -> dict[str, torch.Tensor]:
    items = [ds.get(i, 0) for i in range(len(ds))]
    g = torch.Generator().manual_seed(seed)
    pixels = torch.from_numpy(np.stack([it["pixel_values"] for it in items]))
    h = ds.resolution // 8
    with torch.no_grad():
        dist = comps.vae.encode(pixels).latent_dist
        latents = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * comps.vae.config.scaling_factor
        ids = comps.tokenizer([it["caption"] for it in items], padding="max_length", truncation=True,
                              max_length=comps.tokenizer.model_max_length, return_tensors="pt").input_ids
        text = comps.text_encoder(ids)[0]
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (len(items),), generator=g)
    out = {"z_t": add_noise(latents, noise, t, ddpm_alphas_cumprod(comps.scheduler_config)), "t": t,
           "noise": noise, "text": text, "wplus": torch.from_numpy(np.stack([it["wplus"] for it in items]))}
    if "mask" in items[0]:
        out["mask"] = F.interpolate(torch.from_numpy(np.stack([it["mask"] for it in items])), size=(h, h),
                                    mode="bilinear", align_corners=False)
    return out


def heldout_rec_loss(comps: Any, wproj: Any, ds: TrainDataset, seed: int = 0) -> float:
    b = _batch(ds, comps, seed)
    with torch.no_grad():
        eps = predict_noise(comps.unet, wproj, b["z_t"], b["t"], b["text"], b["wplus"], 1.0)
    return float(F.mse_loss(eps, b["noise"]))


def background_change(comps: Any, wproj: Any, ds: TrainDataset, seed: int = 0) -> float:
    b = _batch(ds, comps, seed)
    swapped = b["wplus"].roll(1, dims=0)
    with torch.no_grad():
        e1 = predict_noise(comps.unet, wproj, b["z_t"], b["t"], b["text"], b["wplus"], 1.0)
        e2 = predict_noise(comps.unet, wproj, b["z_t"], b["t"], b["text"], swapped, 1.0)
    m_bar = (1.0 - b["mask"]).expand_as(e1)
    return float(((m_bar * (e1 - e2)) ** 2).mean())
