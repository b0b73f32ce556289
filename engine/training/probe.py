"""The loss probe: the stage-2 losses of one fixed batch, nothing updated (a reproducibility check).

NPZ keys: `latents` (B×4×h×w clean x0), `noise` (same shape), `timesteps` (B, int), `text_embeds` (B×77×768),
`wplus` and `wplus_perturbed` (B×18×512), `mask` (B×1×h×w face region in [0, 1] at latent resolution).
z_t comes from the model folder's DDPM schedule; ε̂ uses W+ scale 1 (no delayed conditioning in training).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import InvalidInput
from engine.training.objectives import Lambdas, adapter_losses, add_noise, ddpm_alphas_cumprod

PROBE_KEYS = ("latents", "noise", "timesteps", "text_embeds", "wplus", "wplus_perturbed", "mask")


def read_probe(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load and check a probe NPZ (every key present, consistent shapes, finite values).

    Raises:
        InvalidInput: unreadable file, a missing key or a wrong shape (the message names it).
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"Cannot read the probe {p} ({exc}).", "Give an .npz written with numpy.savez.") from exc
    missing = [k for k in PROBE_KEYS if k not in arrays]
    if missing:
        raise InvalidInput(f"The probe {p} lacks the key(s) {', '.join(missing)}.",
                           f"A probe needs {', '.join(PROBE_KEYS)}.")
    lat = arrays["latents"]
    if lat.ndim != 4:
        raise InvalidInput(f"probe 'latents' must be B×4×h×w, got {lat.shape}.")
    b, _, h, w = lat.shape
    want = {"noise": lat.shape, "timesteps": (b,), "text_embeds": (b, 77, None), "wplus": (b, 18, 512),
            "wplus_perturbed": (b, 18, 512), "mask": (b, 1, h, w)}
    for key, shape in want.items():
        got = arrays[key].shape
        if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape, strict=True)):
            raise InvalidInput(f"probe '{key}' has shape {got}, expected {tuple('*' if s is None else s for s in shape)}.")
        if not np.isfinite(arrays[key]).all():
            raise InvalidInput(f"probe '{key}' has NaN or Inf values.")
    t = arrays["timesteps"]
    if not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() > 999:
        raise InvalidInput(f"probe 'timesteps' must be integers in 0..999, got {t.dtype} {t.min()}..{t.max()}.")
    return arrays


def probe_losses(
    unet: Any, wproj: Any, scheduler_config: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
    lambdas: Lambdas = Lambdas(),
) -> dict[str, Any]:
    """The four stage-2 losses of the batch in `arrays`, in the dtype/device of `unet`."""
    p = next(unet.parameters())

    def t(key: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(arrays[key], dtype=np.float64)).to(device=p.device, dtype=p.dtype)

    steps = torch.from_numpy(np.asarray(arrays["timesteps"], dtype=np.int64)).to(p.device)
    with torch.no_grad():
        z_t = add_noise(t("latents"), t("noise"), steps, ddpm_alphas_cumprod(scheduler_config))
        losses = adapter_losses(unet, wproj, z_t, steps, t("noise"), t("text_embeds"), t("wplus"), stage=2,
                                wplus_perturbed=t("wplus_perturbed"), mask=t("mask"), lambdas=lambdas)
    out: dict[str, Any] = {k: float(v) for k, v in losses.items()}
    out.update(lambda_disen=lambdas.disen, lambda_preserve=lambdas.preserve, batch=int(arrays["latents"].shape[0]),
               dtype=str(p.dtype).removeprefix("torch."))
    return out


def run_probe(probe: str | os.PathLike[str], model: str | os.PathLike[str], adapter: str | os.PathLike[str],
              output: str | os.PathLike[str], *, lambdas: Lambdas = Lambdas(), device: str = "cpu",
              dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Load SD1.5 + the adapter, compute the probe's losses, write them as JSON (atomically)."""
    from engine.fileio import atomic_write_bytes
    from engine.networks.sd15 import load_sd15
    from engine.networks.wplus import load_wplus_adapter

    arrays = read_probe(probe)
    comps = load_sd15(model, device=device, dtype=dtype)
    wproj = load_wplus_adapter(comps.unet, adapter)
    losses = probe_losses(comps.unet, wproj, comps.scheduler_config, arrays, lambdas)
    losses.update(probe=str(probe), model=str(model), adapter=str(adapter))
    atomic_write_bytes(output, (json.dumps(losses, indent=2) + "\n").encode("utf-8"))
    return losses
