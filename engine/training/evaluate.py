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


def learning_experiment(workdir: Any, *, steps1: int = 30, steps2: int = 30, lr1: float = 1e-2, lr2: float = 1e-3,
                        batch: int = 4) -> dict[str, float]:
    """Tiny SD1.5 + synthetic data: stage 1 then stage 2 (paper's λ), measured on held-out items.

    Returns held-out L_rec before/after stage 1 and the background change under an identity swap after
    stage 1 and after stage 2 (docs/TRAINING.md reports these; the learning test checks their order).
    """
    from pathlib import Path

    from engine.networks.sd15 import load_sd15
    from engine.networks.wplus import WProj, install_wplus_processors, load_wplus_adapter
    from engine.testing.tiny import write_tiny_sd15
    from engine.training.loop import TrainConfig, train
    from engine.training.synthetic import write_synthetic_dataset

    d = Path(workdir)
    model = write_tiny_sd15(d / "sd15")
    write_synthetic_dataset(d / "train1", 1, 16, seed=0)
    write_synthetic_dataset(d / "held1", 1, 32, seed=1)
    write_synthetic_dataset(d / "train2", 2, 96, seed=0)
    write_synthetic_dataset(d / "held2", 2, 96, seed=1)
    held1, held2 = TrainDataset(d / "held1", 1, 64), TrainDataset(d / "held2", 2, 64)

    def models(adapter: Any) -> tuple[Any, Any]:
        comps = load_sd15(model)
        if adapter is None:
            install_wplus_processors(comps.unet)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the same WProj init as the run (seed 0)
                return comps, WProj()
        return comps, load_wplus_adapter(comps.unet, adapter)

    out: dict[str, float] = {}
    comps, wproj = models(None)
    out["rec_initial"] = heldout_rec_loss(comps, wproj, held1)
    r1 = train(TrainConfig(stage=1, model=str(model), data=str(d / "train1"), out=str(d / "run1"), steps=steps1,
                           batch=batch, lr=lr1, resolution=64, save_every=steps1, cpu=True, quiet=True))
    comps, wproj = models(r1.adapter)
    out["rec_stage1"] = heldout_rec_loss(comps, wproj, held1)
    out["bg_change_stage1"] = background_change(comps, wproj, held2)
    r2 = train(TrainConfig(stage=2, model=str(model), data=str(d / "train2"), out=str(d / "run2"), init=str(r1.adapter),
                           steps=steps2, batch=batch, lr=lr2, resolution=64, save_every=steps2, cpu=True, quiet=True))
    comps, wproj = models(r2.adapter)
    out["bg_change_stage2"] = background_change(comps, wproj, held2)
    out["rec_stage2"] = heldout_rec_loss(comps, wproj, held1)
    return out
