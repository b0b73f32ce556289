"""Rule-wbn-1 checkpoints written in the official file layouts (e4e `.pt`, W+ adapter `.bin`).

Tests and benchmarks load these through the product loaders, so the file format, the key mapping and
the numbers are all exercised. Values are generated key by key in float64 and cast at once, so a
full-size e4e file never needs more than one float64 tensor in memory besides the result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.testing.wbn import value

DEFAULT_E4E_OPTS: dict[str, Any] = {
    "encoder_type": "Encoder4Editing",
    "stylegan_size": 1024,
    "start_from_latent_avg": True,
    "checkpoint_path": "",
    "device": "cuda:0",
}


def rule_tensors(
    shapes: Mapping[str, Sequence[int]],
    *,
    siblings: Mapping[str, Sequence[int]] | None = None,
    stylegan_file: bool = False,
    dtype: Any = None,
) -> dict[str, Any]:
    """wbn-1 (and wbn-1d for `decoder.*` with `stylegan_file`) values as torch tensors, one key at a time.

    Args:
        shapes: the keys to generate → shapes.
        siblings: all keys of the file (1-D categories depend on them); default `shapes`.
        stylegan_file: the file is the e4e checkpoint (its `decoder.*` keys follow wbn-1d).
        dtype: floating dtype (default float32); counters stay int64.
    """
    import torch

    dtype = dtype or torch.float32
    every = dict(siblings or shapes)
    keys = list(every)
    ndim = {k: len(s) for k, s in every.items()}
    out: dict[str, Any] = {}
    for k, s in shapes.items():
        v = value(k, s, keys, ndim, stylegan_file=stylegan_file)
        out[k] = torch.from_numpy(v) if v.dtype == np.int64 else torch.from_numpy(v).to(dtype)
    return out


def write_official_e4e(
    path: str | os.PathLike[str],
    shapes: Mapping[str, Sequence[int]],
    opts: Mapping[str, Any] | None = None,
) -> Path:
    """Write `{'state_dict': {encoder.*, decoder.*}, 'latent_avg', 'opts'}` with rule weights (torch.save).

    Args:
        path: target file.
        shapes: every `encoder.*`/`decoder.*` key of the file → shape (e.g. from e4e_manifest.json),
            optionally with `latent_avg`; `latent_avg` (18×512) is added when absent.
        opts: the stored options (default: the inference-relevant official values).
    """
    import torch

    every = dict(shapes)
    every.setdefault("latent_avg", (18, 512))
    tensors = rule_tensors(every, stylegan_file=True)
    latent_avg = tensors.pop("latent_avg")
    torch.save({"state_dict": tensors, "latent_avg": latent_avg, "opts": dict(opts or DEFAULT_E4E_OPTS)}, path)
    return Path(path)


def adapter_file_shapes(
    w_proj: Mapping[str, Sequence[int]], wplus_adapter: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """The rule keys of an adapter file: `w_proj.<key>` and `wplus_adapter.<key>`."""
    out = {f"w_proj.{k}": tuple(s) for k, s in w_proj.items()}
    out.update({f"wplus_adapter.{k}": tuple(s) for k, s in wplus_adapter.items()})
    return out


def rule_adapter(
    w_proj: Mapping[str, Sequence[int]], wplus_adapter: Mapping[str, Sequence[int]]
) -> dict[str, dict[str, Any]]:
    """The official adapter dict `{'w_proj': {...}, 'wplus_adapter': {...}}` with rule weights."""
    tensors = rule_tensors(adapter_file_shapes(w_proj, wplus_adapter))
    return {
        "w_proj": {k: tensors[f"w_proj.{k}"] for k in w_proj},
        "wplus_adapter": {k: tensors[f"wplus_adapter.{k}"] for k in wplus_adapter},
    }


def write_official_adapter(
    path: str | os.PathLike[str],
    w_proj: Mapping[str, Sequence[int]],
    wplus_adapter: Mapping[str, Sequence[int]],
) -> Path:
    """Write `{'w_proj': ..., 'wplus_adapter': ...}` with rule weights (torch.save), as `wplus_adapter.bin`."""
    import torch

    torch.save(rule_adapter(w_proj, wplus_adapter), path)
    return Path(path)


def write_official_psfrgan(path: str | os.PathLike[str]) -> Path:
    """Write `psfrgan_epoch15_net_G.pth` as the official file is: a plain state dict (raw keys), rule weights.

    Shapes come from the product's own layout (`engine.networks.psfrgan.psfrgan_layout`); the fidelity
    test pins that layout to PSFRGAN.md §2 (111 keys, 45,956,995 parameters) independently.
    """
    import torch

    from engine.networks.psfrgan import psfrgan_layout

    torch.save(rule_tensors(psfrgan_layout()), path)
    return Path(path)
