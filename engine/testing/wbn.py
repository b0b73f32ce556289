"""The "weights by name" rule wbn-1 (REFERENCE.md §10.1) and its decoder extension wbn-1d (STYLEGAN2.md §5).

Every tensor is a pure function of its key and shape, so full-size architectures get reproducible,
numerically healthy weights without any download.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

_EQUAL_LINEAR = re.compile(r"^encoder\.styles\.\d+\.linear\.weight$")
_MOD = r"(conv1|convs\.\d+|to_rgb1|to_rgbs\.\d+)"
_STY = r"(conv1|convs\.\d+)"
_RGB = r"(to_rgb1|to_rgbs\.\d+)"
_FIR = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0]) / 16.0
_WBN1D: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), c)
    for p, c in (
        (r"^decoder\.(convs\.\d+\.conv\.blur\.kernel|to_rgbs\.\d+\.upsample\.kernel)$", "fir_kernel"),
        (r"^decoder\.noises\.noise_\d+$", "noise_buffer"),
        (r"^decoder\.input\.input$", "const_input"),
        (r"^decoder\.style\.\d+\.weight$", "mapping_weight"),
        (r"^decoder\.style\.\d+\.bias$", "mapping_bias"),
        (rf"^decoder\.{_MOD}\.conv\.weight$", "modconv_weight"),
        (rf"^decoder\.{_MOD}\.conv\.modulation\.weight$", "modulation_weight"),
        (rf"^decoder\.{_MOD}\.conv\.modulation\.bias$", "modulation_bias"),
        (rf"^decoder\.{_STY}\.noise\.weight$", "noise_strength"),
        (rf"^decoder\.{_STY}\.activate\.bias$", "act_bias"),
        (rf"^decoder\.{_RGB}\.bias$", "rgb_bias"),
    )
)


def draw(key: str, shape: Sequence[int]) -> np.ndarray:
    """z = standard normal float64 of `shape`, seeded by crc32(key)."""
    return np.random.default_rng(zlib.crc32(key.encode("utf-8"))).standard_normal(size=tuple(shape))


def category(key: str, shape: Sequence[int], siblings: Iterable[str], *, stylegan_file: bool = False) -> str:
    """The wbn-1/wbn-1d category of `key`; `siblings` are all keys of the same file.

    wbn-1d governs `decoder.*` only in the e4e checkpoint (`stylegan_file=True`); ParseNet has
    `decoder.*` keys of its own that stay under wbn-1.
    """
    if stylegan_file and key.startswith("decoder."):
        for pattern, cat in _WBN1D:
            if pattern.match(key):
                return cat
        raise ValueError(f"wbn-1d has no category for {key!r}")
    last = key.rsplit(".", 1)[-1]
    prefix = key.rsplit(".", 1)[0] if "." in key else ""
    ndim = len(shape)
    if last == "num_batches_tracked":
        return "zero_int"
    if last == "running_mean":
        return "running_mean"
    if last == "running_var":
        return "running_var"
    if key == "latent_avg":
        return "latent_avg"
    if ndim >= 2 and _EQUAL_LINEAR.match(key):
        return "runtime_scaled"
    if ndim >= 2:
        return "fan_in"
    sib = set(siblings)
    if ndim == 1 and last == "weight":
        if f"{prefix}.bias" in sib or f"{prefix}.running_var" in sib:
            return "norm_weight"
        return "prelu"
    if ndim == 1 and last == "bias" and f"{prefix}.weight" in sib:
        return "norm_bias_candidate"
    return "bias"


def value(
    key: str,
    shape: Sequence[int],
    siblings: Iterable[str],
    sibling_ndim: Mapping[str, int],
    *,
    stylegan_file: bool = False,
) -> np.ndarray:
    """The float64 (or int64) value the rule gives `key`."""
    shape = tuple(int(s) for s in shape)
    cat = category(key, shape, siblings, stylegan_file=stylegan_file)
    if cat == "norm_bias_candidate":
        prefix = key.rsplit(".", 1)[0]
        cat = "norm_bias" if sibling_ndim.get(f"{prefix}.weight") == 1 else "bias"
    if cat == "zero_int":
        return np.zeros(shape, dtype=np.int64)
    if cat == "fir_kernel":
        return _FIR.copy()
    z = draw(key, shape)
    if cat == "running_mean":
        return 0.1 * z
    if cat == "running_var":
        return 1.0 + 0.1 * np.abs(z)
    if cat == "latent_avg":
        return 0.5 * z
    if cat in ("runtime_scaled", "noise_buffer", "const_input", "modconv_weight", "modulation_weight"):
        return z
    if cat == "fan_in":
        return z / np.sqrt(float(np.prod(shape[1:])))
    if cat == "norm_weight":
        return 1.0 + 0.1 * z
    if cat == "prelu":
        return 0.25 + 0.05 * z
    if cat == "mapping_weight":
        return 100.0 * z
    if cat == "mapping_bias":
        return 2.0 * z
    if cat == "modulation_bias":
        return 1.0 + 0.1 * z
    if cat == "noise_strength":
        return 0.1 * z
    if cat in ("norm_bias", "act_bias", "rgb_bias"):
        return 0.1 * z if cat == "norm_bias" else 0.02 * z
    return 0.02 * z


def rule_state(shapes: Mapping[str, Sequence[int]], *, stylegan_file: bool = False) -> dict[str, np.ndarray]:
    """Rule values for every key of one file, given all its keys and shapes (float64/int64 numpy).

    Pass `stylegan_file=True` for the e4e checkpoint so its `decoder.*` keys follow wbn-1d.
    """
    keys = list(shapes)
    ndim = {k: len(s) for k, s in shapes.items()}
    return {k: value(k, shapes[k], keys, ndim, stylegan_file=stylegan_file) for k in keys}


def rule_state_dict(
    shapes: Mapping[str, Sequence[int]],
    dtypes: Mapping[str, Any] | None = None,
    *,
    stylegan_file: bool = False,
):
    """Like `rule_state` but as torch tensors (float32 unless `dtypes` says otherwise)."""
    import torch

    out = {}
    for k, v in rule_state(shapes, stylegan_file=stylegan_file).items():
        if v.dtype == np.int64:
            out[k] = torch.from_numpy(v)
        else:
            dt = (dtypes or {}).get(k, torch.float32)
            out[k] = torch.from_numpy(v).to(dt)
    return out


def fill_module(module, prefix: str = "") -> None:
    """Overwrite every parameter and buffer of `module` with rule values, keys = `prefix` + state key.

    The module's state dict must be the whole file (siblings decide 1-D categories).
    """
    import torch

    sd = module.state_dict()
    vals = rule_state({prefix + k: tuple(v.shape) for k, v in sd.items()})
    module.load_state_dict({k: torch.from_numpy(vals[prefix + k]).to(v.dtype) for k, v in sd.items()}, strict=True)


def rule_input(key: str, shape: Sequence[int], kind: str = "normal") -> np.ndarray:
    """Pseudo-key inputs: `tanh` for images, `normal` for embeddings, `half` (0.5·z) for W+."""
    z = draw(key, shape)
    if kind == "tanh":
        return np.tanh(z)
    if kind == "half":
        return 0.5 * z
    return z
