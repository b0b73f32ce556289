"""The e4e face encoder (Encoder4Editing, IR-SE50 backbone) in plain PyTorch.

Structure and forward follow REFERENCE.md §2.2: an IR-SE50 body of 24 bottleneck_IR_SE units, three
feature taps (c1/c2/c3), an FPN-style top-down path with two lateral 1×1 convs, and 18 gradual style
heads that predict one base code w0 plus per-layer offsets. Module and parameter names equal the
keys of `e4e_ffhq_encode.pt` after stripping `encoder.`, so the official weights load strictly.

The checkpoint loader (`load_e4e_checkpoint`) sits here too: it reads the official pickle or its
safetensors conversion through `engine.models.safe_load` and checks the layout against this module.

No StyleGAN2 CUDA ops are imported (the official code compiles them at import): EqualLinear is
re-implemented below.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ModelCorrupt

NUM_STYLES = 18  # log2(1024)·2 − 2: StyleGAN2-FFHQ-1024 has 18 W+ rows
STYLE_DIM = 512
COARSE_IND = 3  # styles 3..6 read the 32×32 pyramid level
MIDDLE_IND = 7  # styles 7..17 read the 64×64 level
TAP_C1, TAP_C2, TAP_C3 = 6, 20, 23  # body unit outputs used as c1 (64²), c2 (32²), c3 (16²)


class _Unit(NamedTuple):
    in_channel: int
    depth: int
    stride: int


def _ir50_units() -> list[_Unit]:
    """The 24 (in, depth, stride) units of IR-50: stages of 3, 4, 14, 3; the first of each has stride 2."""
    units: list[_Unit] = []
    for in_c, depth, count in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)):
        units.append(_Unit(in_c, depth, 2))
        units.extend(_Unit(depth, depth, 1) for _ in range(count - 1))
    return units


class SEModule(nn.Module):
    """Squeeze-and-excitation: channel gates from the global average (keys fc1, fc2; no biases)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * g


class BottleneckIRSE(nn.Module):
    """One IR-SE unit: `res_layer(x) + shortcut_layer(x)` (pre-BN residual branch, SE at its end)."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            # kernel-1 max pool = plain subsampling; it has no weights, so no checkpoint keys
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """StyleGAN2's equalized-LR linear layer without activation: `y = x·(W·s)ᵀ + b·lr_mul`, s = lr_mul/√in.

    The stored weight is unscaled; the scale is applied at run time, as in the checkpoint's source.
    """

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 3×3 convs with LeakyReLU(0.01) down to 1×1, then an EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int) -> None:
        super().__init__()
        self.out_c = out_c
        num_pools = int(math.log2(spatial))
        layers: list[nn.Module] = [nn.Conv2d(in_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            layers += [nn.Conv2d(out_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class E4EEncoder(nn.Module):
    """Encoder4Editing(50, 'ir_se') at the inference progressive stage (all 18 styles), plus `latent_avg`.

    `state_dict()` keys are the checkpoint's `encoder.*` keys without the prefix, plus the buffer
    `latent_avg` (18×512, the checkpoint's top-level entry).
    """

    latent_avg: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.PReLU(64),
        )
        self.body = nn.Sequential(*(BottleneckIRSE(u.in_channel, u.depth, u.stride) for u in _ir50_units()))
        spatials = [16 if i < COARSE_IND else 32 if i < MIDDLE_IND else 64 for i in range(NUM_STYLES)]
        self.styles = nn.ModuleList(GradualStyleBlock(512, STYLE_DIM, s) for s in spatials)
        self.latlayer1 = nn.Conv2d(256, 512, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(128, 512, kernel_size=1, stride=1, padding=0)
        self.register_buffer("latent_avg", torch.zeros(NUM_STYLES, STYLE_DIM))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's own output (B×18×512): w0 on every row plus per-row offsets, without latent_avg."""
        x = self.input_layer(x)
        c1 = c2 = c3 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == TAP_C1:
                c1 = x
            elif i == TAP_C2:
                c2 = x
            elif i == TAP_C3:
                c3 = x
        w0 = self.styles[0](c3)
        rows = [w0]
        features = c3
        p2 = c3
        for i in range(1, NUM_STYLES):
            if i == COARSE_IND:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == MIDDLE_IND:
                features = _upsample_add(p2, self.latlayer2(c1))
            # w0 + δ_i, as the official in-place `w[:, i] += δ_i` (same float op, export-friendly)
            rows.append(w0 + self.styles[i](features))
        return torch.stack(rows, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode aligned, background-whitened faces.

        Args:
            x: B×3×256×256 RGB in [-1, 1].

        Returns:
            W+ = codes + latent_avg, B×18×512.
        """
        return self.codes(x) + self.latent_avg


def e4e_layout() -> dict[str, tuple[int, ...]]:
    """Expected `encoder.*` layout (prefix stripped) → shape, computed without allocating weights."""
    with torch.device("meta"):
        model = E4EEncoder()
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "latent_avg"}


def load_e4e(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> E4EEncoder:
    """Build the encoder from an e4e checkpoint (official `.pt` or our `.safetensors` conversion).

    Args:
        path: the checkpoint file.
        device: where the module lives.
        dtype: floating dtype of its parameters (BatchNorm counters stay int64).

    Returns:
        The encoder in eval mode, with `latent_avg` loaded.

    Raises:
        ModelMissing, ModelCorrupt, UnsafeCheckpoint: see `load_e4e_checkpoint`.
    """
    ckpt = load_e4e_checkpoint(path, parts=("encoder",))  # the 120 MB StyleGAN2 decoder is not needed here
    with torch.device("meta"):
        model = E4EEncoder()
    state = dict(ckpt.encoder_state)
    state["latent_avg"] = ckpt.latent_avg
    # assign=True adopts the loaded tensors instead of copying into fresh storage (one copy of 1 GB, not two)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    return model.eval()


# -- loading ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class E4ECheckpoint:
    """The parts of an e4e checkpoint the engine uses.

    Attributes:
        encoder_state: Encoder4Editing state, keys without `encoder.` (621 tensors for the official file).
        decoder_state: StyleGAN2 generator state, keys without `decoder.` (empty if the file has none).
        latent_avg: 18×512 mean latent added to the encoder's codes.
        opts: the training options stored with the checkpoint (informative only).
    """

    encoder_state: dict[str, torch.Tensor]
    decoder_state: dict[str, torch.Tensor]
    latent_avg: torch.Tensor
    opts: dict[str, Any] = field(default_factory=dict)




E4E_PARTS = ("encoder", "decoder")


def _e4e_parts(parts: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(parts))
    unknown = [x for x in chosen if x not in E4E_PARTS]
    if unknown or not chosen:
        raise ValueError(f"e4e parts must be a non-empty selection of {E4E_PARTS}, got {tuple(parts)!r}")
    return chosen


def load_e4e_checkpoint(
    path: str | os.PathLike[str], parts: Sequence[str] = E4E_PARTS
) -> E4ECheckpoint:
    """Load and check an e4e checkpoint (official pickle or our safetensors conversion).

    Args:
        path: `e4e_ffhq_encode.pt` or its `.safetensors` conversion.
        parts: which networks to load: ("encoder", "decoder") (default), ("encoder",) for the face
            encoder, ("decoder",) for the StyleGAN2 preview. A `.safetensors` file reads only the chosen
            tensors; a zip-format pickle is memory-mapped, so the unused tensors are not read either
            (a legacy pickle must be read whole; the unused tensors are dropped at once). `latent_avg`
            and the opts are always loaded.

    Returns:
        The encoder state (checked strictly against the IR-SE50 Encoder4Editing layout when loaded;
        empty when not asked for), the decoder state (unchecked here; the StyleGAN2 loader checks it;
        empty when not asked for or absent), latent_avg (18×512) and the opts.

    Raises:
        ModelMissing, UnsafeCheckpoint: as `load_state`.
        ModelCorrupt: damaged file, or not the e4e layout (message names the first offending key).
        ValueError: `parts` names something else than "encoder"/"decoder".
    """
    from engine.models.safe_load import (
        LAYOUT_E4E,
        LAYOUT_KEY,
        PICKLE_SUFFIXES,
        REDOWNLOAD_HINT,
        SAFETENSORS_SUFFIX,
        as_tensor_dict,
        check_exists,
        check_layout,
        load_pickle,
        load_safetensors,
        load_state_with_metadata,
        shape_of,
        strip_prefix,
    )

    chosen = _e4e_parts(parts)
    everything = set(chosen) == set(E4E_PARTS)
    prefixes = tuple(f"{x}." for x in chosen)

    def keep(key: str) -> bool:
        return key == "latent_avg" or key.startswith(prefixes)

    p = Path(path)
    check_exists(p)
    layout = "e4e checkpoint (Encoder4Editing IR-SE50 + latent_avg)"
    suffix = p.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        tensors, metadata, keys = load_safetensors(p, None if everything else keep)
        obj: dict[str, Any] = dict(tensors)
        # a foreign key is reported as unexpected below, without reading it
        foreign = next((k for k in keys if k != "latent_avg" and not k.startswith(("encoder.", "decoder."))), None)
        if foreign is not None:
            obj[foreign] = None
        if metadata.get(LAYOUT_KEY, LAYOUT_E4E) != LAYOUT_E4E:
            raise ModelCorrupt(f"{p} is a converted '{metadata[LAYOUT_KEY]}' file, not an {layout}.")
        flat = obj
        try:
            opts = json.loads(metadata.get("opts", "{}"))
        except json.JSONDecodeError:
            opts = {}
    else:
        mapped = suffix in PICKLE_SUFFIXES and not everything
        if mapped:
            # memory-mapped: the official zip-format file's 120 MB decoder loads without reading the
            # 1.07 GB encoder (a legacy pickle is read whole; its unused tensors are dropped at once)
            obj = load_pickle(p, mmap=True)
            if not isinstance(obj, dict):
                raise ModelCorrupt(f"{p} holds a {type(obj).__name__}, not a dictionary of weights.",
                                   REDOWNLOAD_HINT)
        else:
            obj, _ = load_state_with_metadata(p)
        if "state_dict" not in obj or "latent_avg" not in obj:
            raise ModelCorrupt(
                f"{p} does not have the {layout} layout: the top-level keys 'state_dict' and 'latent_avg' "
                f"are required, found {sorted(map(str, obj))[:6]}.",
                "Use e4e_ffhq_encode.pt (the FFHQ encoder) for the face encoder.",
            )
        state = as_tensor_dict(obj["state_dict"], p, "state_dict")
        # foreign keys stay so the layout check below reports them; unused networks are dropped here
        flat = {k: v for k, v in state.items() if keep(k) or not k.startswith(("encoder.", "decoder."))}
        flat["latent_avg"] = obj["latent_avg"]
        opts = obj.get("opts") or {}
        opts = dict(opts) if isinstance(opts, Mapping) else {}
        del obj, state
    if "latent_avg" not in flat:
        raise ModelCorrupt(f"{p} does not have the {layout} layout: key 'latent_avg' is missing.", REDOWNLOAD_HINT)
    latent_avg = flat["latent_avg"]
    if not isinstance(latent_avg, torch.Tensor) or tuple(latent_avg.shape) != (18, 512):
        raise ModelCorrupt(
            f"{p} does not have the {layout} layout: 'latent_avg' has shape "
            f"{list(shape_of(latent_avg) or [])}, expected [18, 512].",
            "Only the StyleGAN2-FFHQ-1024 e4e encoder (18 W+ rows) is supported.",
        )
    others = [k for k in flat if k != "latent_avg" and not k.startswith(("encoder.", "decoder."))]
    if others:
        raise ModelCorrupt(f"{p} does not have the {layout} layout: unexpected key '{others[0]}'.", REDOWNLOAD_HINT)
    encoder_state = strip_prefix(flat, "encoder.") if "encoder" in chosen else {}
    decoder_state = strip_prefix(flat, "decoder.") if "decoder" in chosen else {}
    if "encoder" in chosen:
        check_layout(encoder_state, e4e_layout(), p, layout)
    latent_avg = latent_avg.detach().to(torch.float32)
    if not everything:
        latent_avg = latent_avg.clone()  # not a view of a memory-mapped file
    return E4ECheckpoint(
        encoder_state=encoder_state,
        decoder_state=decoder_state,
        latent_avg=latent_avg,
        opts=opts,
    )
