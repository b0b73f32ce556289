"""Real StyleGAN2 decoders with rule-wbn-1d weights, and e4e checkpoint files that carry them (tests, bench).

The full-size decoder gets exactly the fixture weights (STYLEGAN2.md §5); reduced-channel decoders
(`GeneratorShape.reduced`) use the same rule on their own shapes and the same code path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.testing.wbn import rule_input, rule_state


def decoder_shapes(shape: Any = None) -> dict[str, tuple[int, ...]]:
    """`decoder.`-prefixed key → shape of a generator of `shape` (default: the official 1024² one)."""
    from engine.networks.stylegan2.modules import GeneratorShape, StyleGAN2Generator

    gen = StyleGAN2Generator(shape or GeneratorShape())
    return {f"decoder.{k}": tuple(v.shape) for k, v in gen.state_dict().items()}


def rule_decoder_state(shape: Any = None) -> dict[str, Any]:
    """wbn-1d decoder weights as float32 tensors, keys without `decoder.` (what the loader returns)."""
    import torch

    vals = rule_state(decoder_shapes(shape), stylegan_file=True)
    return {k[len("decoder.") :]: torch.from_numpy(v).to(torch.float32) for k, v in vals.items()}


def rule_wplus(key: str = "input:wplus", n_latent: int = 18, style_dim: int = 512) -> np.ndarray:
    """A rule W+ (0.5·z of a pseudo-key), float32 1×n_latent×style_dim."""
    return rule_input(key, (1, n_latent, style_dim), "half").astype(np.float32)


def write_e4e_checkpoint(
    path: str | os.PathLike[str], decoder_state: Mapping[str, Any] | None, *, encoder: bool = True
) -> Path:
    """Write a file in the official e4e layout: `{'state_dict': {encoder.*, decoder.*}, 'latent_avg', 'opts'}`.

    The encoder keys carry the exact official shapes but zero-stride placeholder values (a 1.07 GB
    encoder would cost seconds and gigabytes; the preview never reads it). `latent_avg` follows wbn-1.

    Args:
        path: target `.pt` file.
        decoder_state: decoder tensors without the `decoder.` prefix; None writes a file without decoder.
        encoder: include the placeholder encoder keys (the e4e loader checks their layout).

    Returns:
        The path written.
    """
    import torch

    state: dict[str, Any] = {}
    if encoder:
        from engine.networks.e4e import e4e_layout

        one = torch.zeros(1)
        for k, s in e4e_layout().items():
            if k.endswith("num_batches_tracked"):
                state[f"encoder.{k}"] = torch.zeros((), dtype=torch.int64)
            else:
                state[f"encoder.{k}"] = one.expand(*s) if s else torch.zeros(())
    for k, v in (decoder_state or {}).items():
        state[f"decoder.{k}"] = v
    latent_avg = torch.from_numpy(rule_state({"latent_avg": (18, 512)})["latent_avg"]).to(torch.float32)
    obj = {
        "state_dict": state,
        "latent_avg": latent_avg,
        "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "start_from_latent_avg": True},
    }
    p = Path(path)
    torch.save(obj, str(p))
    return p
