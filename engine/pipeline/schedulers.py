"""The denoising schedulers offered to users, built from the SD1.5 scheduler configuration.

Each is created fresh per generation (schedulers keep per-run state) with `from_config` as diffusers'
own pipelines do when a user swaps schedulers, so a request reproduces what StableDiffusionPipeline gives
with the same scheduler class and config.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from engine.api import Scheduler
from engine.errors import InvalidInput

LABELS: Mapping[Scheduler, str] = {
    Scheduler.EULER: "Euler (official default)",
    Scheduler.DDIM: "DDIM",
    Scheduler.DPMPP_2M_KARRAS: "DPM++ 2M Karras",
    Scheduler.EULER_ANCESTRAL: "Euler ancestral",
}


def make_scheduler(kind: Scheduler | str, config: Mapping[str, Any]) -> Any:
    """A new diffusers scheduler of `kind` from an SD1.5 scheduler config.

    Args:
        kind: "euler" (EulerDiscreteScheduler, the official default), "ddim", "dpmpp_2m_karras"
            (DPMSolverMultistepScheduler, dpmsolver++ order 2 with Karras sigmas) or "euler_a"
            (EulerAncestralDiscreteScheduler).
        config: the model's scheduler config (e.g. SD1.5's PNDM config).

    Raises:
        InvalidInput: unknown scheduler name.
    """
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    try:
        kind = Scheduler(kind)
    except ValueError:
        raise InvalidInput(
            f"Unknown scheduler '{kind}'.", f"Use one of: {', '.join(s.value for s in Scheduler)}."
        ) from None
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    if kind is Scheduler.EULER:
        return EulerDiscreteScheduler.from_config(cfg)
    if kind is Scheduler.DDIM:
        return DDIMScheduler.from_config(cfg)
    if kind is Scheduler.DPMPP_2M_KARRAS:
        return DPMSolverMultistepScheduler.from_config(
            cfg, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2
        )
    return EulerAncestralDiscreteScheduler.from_config(cfg)


def step_kwargs(scheduler: Any, generator: Any) -> dict[str, Any]:
    """Extra `step()` arguments exactly as diffusers' pipelines pass them (eta 0, the run's generator)."""
    params = set(inspect.signature(scheduler.step).parameters)
    out: dict[str, Any] = {}
    if "eta" in params:
        out["eta"] = 0.0
    if "generator" in params:
        out["generator"] = generator
    return out
