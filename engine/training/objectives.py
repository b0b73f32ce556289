"""The paper's training objectives and random draws (REFERENCE.md §6).

* `ddpm_alphas_cumprod` / `add_noise`: the DDPM forward process of the model folder's scheduler config.
* `predict_noise`: ε̂(z_t, t, c, w) with the W+ branch at a given scale (1 in training, 0 = plain SD1.5).
* `adapter_losses`: L_rec, L_disen, L_preserve and L = L_rec + λ_disen·L_disen + λ_preserve·L_preserve; the two
  frozen-target predictions (perturbed code, scale 0) run without autograd (they are stop-gradient targets).
* `DropPlan`/`draw_drops`: per sample 5 % W+→0, 5 % text→"", 5 % both (the official if/elif chain).
* `PerturbationSampler`: the perturbed code w̃ — one type per batch (45 % shuffle mix, 7 % scaled code, 13 %
  scaled noise, 15 % one direction, 20 % two blended directions), directions drawn per sample from the shipped
  edit directions (60 % the 17 entries of the official `att_direction_scale.pth` × U(−60, 60), 40 % a GANSpace
  config set to an absolute strength U(−60, 60)). A plan (every random number) is drawn first and applied
  second, so the distributions and the formulas are tested separately.

Unknowns of the official code, and the choice made here: the scalar draws of the batch-level types
(U(−40, 40), k, the noise) are one per batch; the blend weight a of type 5 is per sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LAMBDA_DISEN = 2.0  # train_wild.sh
LAMBDA_PRESERVE = 1.0
DROP_RATES = (0.05, 0.05, 0.05)  # W+ only, text only, both
NUM_TRAIN_TIMESTEPS = 1000

# Perturbation types (REFERENCE.md §6) and their probabilities.
MIX, SCALED_CODE, SCALED_NOISE, ONE_DIRECTION, TWO_DIRECTIONS = range(5)
PERTURBATION_PROBS = (0.45, 0.07, 0.13, 0.15, 0.20)
DIRECTION_LIST_PROB = 0.6  # else GANSpace
DIRECTION_STRENGTH = 60.0
MIX_RANGE = 40.0
SCALED_CODE_K = 60
SCALED_NOISE_K = 80

# The 17 entries of the official `att_direction_scale.pth`, in order: (kind, name); "ig" = InterFaceGAN
# (1×512, repeated on 18 rows), "ld" = latent_directions (18×512 float64). All are added to all 18 rows.
ATT_DIRECTIONS: tuple[tuple[str, str], ...] = (
    ("ig", "age"), ("ig", "pose"), ("ig", "smile"),
    ("ld", "age"), ("ld", "emotion_angry"), ("ld", "emotion_disgust"), ("ld", "emotion_fear"),
    ("ld", "emotion_sad"), ("ld", "emotion_happy"), ("ld", "emotion_surprise"), ("ld", "gender"),
    ("ld", "glasses"), ("ld", "width"), ("ld", "race_white"), ("ld", "angle_pitch"),
    ("ld", "emotion_angry"), ("ld", "eyes_open"),
)


# -- diffusion --------------------------------------------------------------------------------------


def ddpm_alphas_cumprod(scheduler_config: Mapping[str, Any]) -> torch.Tensor:
    """ᾱ_t (float64, 1000) of the DDPM forward process the model folder's scheduler config describes."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(dict(scheduler_config))
    return sched.alphas_cumprod.to(torch.float64)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """z_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (coefficients computed in float64, then cast to x0's dtype)."""
    ac = alphas_cumprod.to(x0.device)[timesteps.to(x0.device).long()]
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a = ac.sqrt().to(x0.dtype).reshape(shape)
    b = (1.0 - ac).sqrt().to(x0.dtype).reshape(shape)
    return a * x0 + b * noise


def predict_noise(
    unet: Any, wproj: Any, z_t: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
    wplus: torch.Tensor, scale: float = 1.0,
) -> torch.Tensor:
    """ε̂(z_t, t, c, w): the UNet on [77 text tokens | WProj(w)] with the W+ branch at `scale`."""
    tokens = wproj(wplus.to(text_embeds.dtype))
    hidden = torch.cat([text_embeds, tokens.to(text_embeds.dtype)], dim=1)
    return unet(z_t, timesteps, encoder_hidden_states=hidden, cross_attention_kwargs={"wplus_scale": scale},
                return_dict=False)[0]


@dataclass(frozen=True)
class Lambdas:
    disen: float = LAMBDA_DISEN
    preserve: float = LAMBDA_PRESERVE


def adapter_losses(
    unet: Any, wproj: Any, z_t: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
    text_embeds: torch.Tensor, wplus: torch.Tensor, *, stage: int,
    wplus_perturbed: torch.Tensor | None = None, mask: torch.Tensor | None = None, lambdas: Lambdas = Lambdas(),
) -> dict[str, torch.Tensor]:
    """The losses of one batch. Stage 1: L = L_rec. Stage 2 (needs `wplus_perturbed` and a `mask` B×1×h×w at
    latent resolution, face = 1): L = L_rec + λ_disen·L_disen + λ_preserve·L_preserve, all MSE means.
    """
    eps = predict_noise(unet, wproj, z_t, timesteps, text_embeds, wplus, 1.0)
    rec = F.mse_loss(eps.float(), noise.float(), reduction="mean")
    if stage == 1:
        return {"loss": rec, "loss_rec": rec}
    if wplus_perturbed is None or mask is None:
        raise ValueError("stage 2 needs the perturbed W+ and the face mask")
    with torch.no_grad():  # sg[·]: targets only, no graph (memory)
        eps_tilde = predict_noise(unet, wproj, z_t, timesteps, text_embeds, wplus_perturbed, 1.0)
        eps_plain = predict_noise(unet, wproj, z_t, timesteps, text_embeds, wplus, 0.0)
    m_bar = (1.0 - mask.to(eps.dtype)).expand_as(eps)  # M repeated on the 4 latent channels
    disen = F.mse_loss((m_bar * eps).float(), (m_bar * eps_tilde).float(), reduction="mean")
    preserve = F.mse_loss(eps.float(), eps_plain.float(), reduction="mean")
    loss = rec + lambdas.disen * disen + lambdas.preserve * preserve
    return {"loss": loss, "loss_rec": rec, "loss_disen": disen, "loss_preserve": preserve}


# -- drop-out ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropPlan:
    """Per sample: the W+ is zeroed / the caption is emptied."""

    drop_wplus: np.ndarray  # bool (B,)
    drop_text: np.ndarray  # bool (B,)


def draw_drop(u: float, rates: Sequence[float] = DROP_RATES) -> tuple[bool, bool]:
    """The official chain on one uniform draw u: [0, a) W+; [a, a+b) text; [a+b, a+b+c) both."""
    a, b, c = rates
    if u < a:
        return True, False
    if u < a + b:
        return False, True
    if u < a + b + c:
        return True, True
    return False, False


# -- perturbed code -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectionDraw:
    """One direction d of one sample: `list_index` into ATT_DIRECTIONS, or `ganspace` index, and strength."""

    list_index: int  # -1 when GANSpace
    ganspace: int  # -1 when a list entry
    strength: float


@dataclass(frozen=True)
class PerturbationPlan:
    """Every random number of one batch's w̃."""

    kind: int
    perm: np.ndarray  # the batch shuffle (w_s = w[perm])
    scalar: float  # MIX: U(−40, 40); SCALED_CODE/SCALED_NOISE: k/10
    noise: np.ndarray | None  # SCALED_NOISE: standard normal B×18×512 (scaled by w's std, shifted by its mean)
    d1: tuple[DirectionDraw, ...] = ()
    d2: tuple[DirectionDraw, ...] = ()
    blend: np.ndarray | None = None  # TWO_DIRECTIONS: a per sample


class PerturbationSampler:
    """Draw and apply the perturbed identity code w̃ of stage 2.

    Args:
        att_directions: the 17 direction tensors (18×512 float64, rows identical), ATT_DIRECTIONS order.
        pca_mean, pca_comp, pca_std: the GANSpace PCA (512; K×512; K).
        ganspace_configs: (pca_index, start_layer, end_layer) per config.
    """

    def __init__(self, att_directions: Sequence[np.ndarray], pca_mean: np.ndarray, pca_comp: np.ndarray,
                 pca_std: np.ndarray, ganspace_configs: Sequence[tuple[int, int, int]]) -> None:
        self.att = np.stack([np.asarray(d, np.float64).reshape(18, 512) for d in att_directions])
        self.mean = np.asarray(pca_mean, np.float64).reshape(512)
        self.comp = np.asarray(pca_comp, np.float64).reshape(-1, 512)
        self.std = np.asarray(pca_std, np.float64).reshape(-1)
        self.configs = tuple((int(k), int(a), int(b)) for k, a, b in ganspace_configs)
        if not self.configs or len(self.att) == 0:
            raise ValueError("the perturbation sampler needs directions and GANSpace configs")

    @classmethod
    def from_resources(cls, root: str | Path | None = None) -> PerturbationSampler:
        """Build from the edit directions the app ships (`resources/directions`)."""
        from engine.edits import directions as dirs
        from engine.resources import resource_path

        base = Path(root) if root is not None else resource_path("directions")
        vecs = []
        for kind, name in ATT_DIRECTIONS:
            if kind == "ig":
                d = dirs._load_npy(base / "interfacegan" / f"{name}.npy", (1, 512), (512,))
                vecs.append(np.repeat(d.reshape(1, 512).astype(np.float64), 18, axis=0))
            else:
                vecs.append(dirs._load_npy(base / "latent_directions" / f"{name}.npy", (18, 512), (1, 18, 512)))
        pca = dirs._load_pca(base / "ganspace" / "ffhq_pca.npz")
        configs = dirs._load_configs(base / "ganspace" / "ganspace_configs.csv", pca)
        return cls(vecs, pca.mean, pca.comp, pca.std, [(c.index, c.start, c.end) for c in configs])

    # -- drawing --------------------------------------------------------------------------------
    def _direction(self, rng: np.random.Generator) -> DirectionDraw:
        strength = float(rng.uniform(-DIRECTION_STRENGTH, DIRECTION_STRENGTH))
        if rng.random() < DIRECTION_LIST_PROB:
            return DirectionDraw(int(rng.integers(len(self.att))), -1, strength)
        return DirectionDraw(-1, int(rng.integers(len(self.configs))), strength)

    def plan(self, rng: np.random.Generator, batch: int) -> PerturbationPlan:
        kind = int(rng.choice(5, p=PERTURBATION_PROBS))
        perm = rng.permutation(batch)
        if kind == MIX:
            return PerturbationPlan(kind, perm, float(rng.uniform(-MIX_RANGE, MIX_RANGE)), None)
        if kind == SCALED_CODE:
            return PerturbationPlan(kind, perm, int(rng.integers(-SCALED_CODE_K, SCALED_CODE_K + 1)) / 10.0, None)
        if kind == SCALED_NOISE:
            k = int(rng.integers(-SCALED_NOISE_K, SCALED_NOISE_K + 1)) / 10.0
            return PerturbationPlan(kind, perm, k, rng.standard_normal((batch, 18, 512)))
        d1 = tuple(self._direction(rng) for _ in range(batch))
        if kind == ONE_DIRECTION:
            return PerturbationPlan(kind, perm, 0.0, None, d1)
        d2 = tuple(self._direction(rng) for _ in range(batch))
        return PerturbationPlan(kind, perm, 0.0, None, d1, d2, rng.uniform(0.0, 1.0, size=batch))

    # -- applying -------------------------------------------------------------------------------
    def direction_delta(self, w: np.ndarray, draw: DirectionDraw) -> np.ndarray:
        """d for one sample (18×512 float64); GANSpace sets the coordinate (measured on row 0) to the strength."""
        if draw.list_index >= 0:
            return draw.strength * self.att[draw.list_index]
        k, start, end = self.configs[draw.ganspace]
        coord = float((w[0] - self.mean) @ self.comp[k]) / self.std[k]
        delta = np.zeros((18, 512))
        delta[start:end] = (draw.strength - coord) * self.std[k] * self.comp[k]
        return delta

    def apply(self, plan: PerturbationPlan, w: np.ndarray, dropped: np.ndarray) -> np.ndarray:
        """w̃ (B×18×512 float64) for the batch W+ `w` (after drop-out); dropped samples get 0."""
        w = np.asarray(w, np.float64)
        ws = w[plan.perm]
        if plan.kind == MIX:
            out = ws + (w - ws) * plan.scalar
        elif plan.kind == SCALED_CODE:
            out = ws + w * plan.scalar
        elif plan.kind == SCALED_NOISE:
            assert plan.noise is not None
            out = ws + (w.mean() + w.std() * plan.noise) * plan.scalar
        elif plan.kind == ONE_DIRECTION:
            out = w + np.stack([self.direction_delta(w[i], d) for i, d in enumerate(plan.d1)])
        else:
            assert plan.blend is not None
            out = w + np.stack([
                a * self.direction_delta(w[i], d1) + (1.0 - a) * self.direction_delta(w[i], d2)
                for i, (a, d1, d2) in enumerate(zip(plan.blend, plan.d1, plan.d2, strict=True))
            ])
        out[np.asarray(dropped, bool)] = 0.0
        return out
