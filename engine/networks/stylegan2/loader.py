"""A StyleGAN2 decoder state dict (the e4e checkpoint's `decoder.*` tensors) → a strictly loaded generator.

Reading the checkpoint file is the caller's business (`engine.networks.e4e.load_e4e_checkpoint`); this
module only infers the architecture from the keys and loads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from engine.errors import ModelCorrupt, ModelMissing
from engine.networks.stylegan2.modules import GeneratorShape, StyleGAN2Generator

# Errors of the preview's network start with this, so callers can show "preview disabled" and go on.
DISABLED = "preview disabled: "
REDOWNLOAD_HINT = "Download e4e_ffhq_encode.pt again or re-import it (`wplus models`)."


def infer_shape(state: Mapping[str, Any]) -> GeneratorShape:
    """Architecture of a decoder state dict (keys without `decoder.`): size, widths, mapping depth.

    Raises:
        ModelCorrupt: when the keys do not describe a StyleGAN2 generator.
    """
    try:
        num_layers = len([k for k in state if k.startswith("noises.noise_")])
        if num_layers < 1 or num_layers % 2 == 0:
            raise KeyError("noises.noise_*")
        log_size = (num_layers - 1) // 2 + 2
        style_dim = int(state["conv1.conv.modulation.weight"].shape[1])
        chans = {4: int(state["input.input"].shape[1])}
        for i in range(3, log_size + 1):
            chans[2**i] = int(state[f"convs.{2 * (i - 3)}.conv.weight"].shape[1])
        n_mlp = len([k for k in state if k.startswith("style.") and k.endswith(".weight")])
    except (KeyError, IndexError, AttributeError) as exc:
        raise ModelCorrupt(
            f"{DISABLED}the StyleGAN2 decoder in the e4e checkpoint is incomplete (missing {exc}).",
            REDOWNLOAD_HINT,
        ) from exc
    return GeneratorShape(
        size=2**log_size, style_dim=style_dim, n_mlp=n_mlp, channels=tuple(sorted(chans.items()))
    )


def generator_from_state(state: Mapping[str, Any]) -> StyleGAN2Generator:
    """Build the generator matching `state` (decoder keys, prefix stripped) and load it strictly.

    Args:
        state: tensor (or numpy array) per key, e.g. `load_e4e_checkpoint(path).decoder_state`.

    Returns:
        The generator in eval mode, float32, requires_grad off.

    Raises:
        ModelMissing: `state` is empty (a checkpoint without the StyleGAN2 decoder); the message
            starts with "preview disabled:".
        ModelCorrupt: missing/unexpected keys or wrong shapes ("preview disabled: …" too).
    """
    if not state:
        raise ModelMissing(
            f"{DISABLED}the e4e checkpoint has no StyleGAN2 decoder (no `decoder.*` keys).",
            "Use the official e4e_ffhq_encode.pt, which carries the decoder, for the face preview; "
            "encoding and generation work without it.",
        )
    tensors = {
        k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))).to(torch.float32)
        for k, v in state.items()
    }
    generator = StyleGAN2Generator(infer_shape(tensors))
    try:
        generator.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
        raise ModelCorrupt(
            f"{DISABLED}the StyleGAN2 decoder in the e4e checkpoint does not fit the generator layout "
            f"({detail[:300]}).",
            REDOWNLOAD_HINT,
        ) from exc
    if not all(torch.isfinite(v).all() for v in tensors.values()):
        raise ModelCorrupt(
            f"{DISABLED}the StyleGAN2 decoder holds NaN or infinite weights.", REDOWNLOAD_HINT
        )
    generator.eval().requires_grad_(False)
    return generator
