"""The W+ adapter (REFERENCE.md §3): WProj and the residual W+ cross-attention processor.

The processors are installed into diffusers' UNet2DConditionModel with `set_attn_processor`, as diffusers
does for IP-Adapter; nothing is monkeypatched. The identity reaches the UNet as the last 4 of 81
`encoder_hidden_states` tokens, and the W+ branch's scale can be given per call (`wplus_scale` in
`cross_attention_kwargs`), so delayed conditioning and the strength slider never rebuild anything and an
exported UNet takes the scale as a runtime input.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ModelCorrupt
from engine.models.safe_load import LAYOUT_ADAPTER, LAYOUT_KEY, REDOWNLOAD_HINT, SAFETENSORS_SUFFIX

NUM_TOKENS = 4
CROSS_DIM = 768
WPLUS_LAYERS = 18
WPLUS_DIM = 512
# Layer ranges of W+ that each of the 4 tokens sees (official proj_index [4, 8, 12, 18]).
TOKEN_LAYER_SPLITS = ((0, 4), (4, 8), (8, 12), (12, 18))
_ADAPTER_KEY = re.compile(r"^(\d+)\.to_(q|k|v)_wplus\.weight$")
_WPROJ_INPUTS = {"proj_0.weight": 2048, "proj_1.weight": 2048, "proj_2.weight": 2048, "proj_3.weight": 3072}


class WProj(nn.Module):
    """W+ (B×18×512) → 4 identity tokens (B×4×768): per-token Linear (no bias) over a layer slice, LayerNorm."""

    def __init__(self, cross_attention_dim: int = CROSS_DIM, embeddings_dim: int = WPLUS_DIM) -> None:
        super().__init__()
        for i, (a, b) in enumerate(TOKEN_LAYER_SPLITS):
            self.add_module(f"proj_{i}", nn.Linear((b - a) * embeddings_dim, cross_attention_dim, bias=False))
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, wplus: torch.Tensor) -> torch.Tensor:
        tokens = [
            getattr(self, f"proj_{i}")(wplus[:, a:b].reshape(wplus.shape[0], -1))
            for i, (a, b) in enumerate(TOKEN_LAYER_SPLITS)
        ]
        return self.norm(torch.stack(tokens, dim=1))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttnProcessor:
    """Plain SDPA attention for attn1 that accepts (and ignores) `wplus_scale`.

    diffusers warns on every call when a cross_attention_kwarg is unknown to a processor; accepting the
    argument keeps a per-call scale silent for the self-attention layers.
    """

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        wplus_scale: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        return _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, None, 0.0)


class WPlusAttnProcessor(nn.Module):
    """Cross-attention with a residual W+ branch whose query is the text-attention output.

    For hidden states X and tokens E = [text (77) | W+ (4)]:
    H = MHA(X·Wq, E_txt·Wk, E_txt·Wv); H' = MHA(H·W'q, E_w·W'k, E_w·W'v); out = to_out(H + scale·H').

    Args:
        hidden_size: the attention layer's channel count (query dim).
        cross_attention_dim: token width (768 for SD1.5).
        scale: default W+ scale when the call does not pass `wplus_scale`.
        num_tokens: identity tokens at the end of `encoder_hidden_states`.
    """

    def __init__(
        self, hidden_size: int, cross_attention_dim: int = CROSS_DIM, scale: float = 1.0, num_tokens: int = NUM_TOKENS
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        self.scale = scale
        self.num_tokens = num_tokens
        self.to_k_wplus = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_wplus = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_q_wplus = nn.Linear(hidden_size, hidden_size, bias=False)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        wplus_scale: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        scale = self.scale if wplus_scale is None else wplus_scale
        return _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, self, scale)


def _attention(
    attn: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    temb: torch.Tensor | None,
    wplus: WPlusAttnProcessor | None,
    scale: torch.Tensor | float,
) -> torch.Tensor:
    """diffusers' AttnProcessor2_0 semantics, plus the W+ branch when `wplus` is given."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

    wplus_tokens = None
    if wplus is not None and encoder_hidden_states is not None:
        # The identity tokens are always the last `num_tokens`; the mask and norm_cross see text only.
        end = encoder_hidden_states.shape[1] - wplus.num_tokens
        encoder_hidden_states, wplus_tokens = encoder_hidden_states[:, :end], encoder_hidden_states[:, end:]

    batch_size, sequence_length, _ = (
        hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    )
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)

    heads = attn.heads
    query, key, value = _heads(query, heads), _heads(key, heads), _heads(value, heads)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
    out = _merge(out).to(query.dtype)

    # A Python-float scale of exactly 0 is SD1.5 itself (H + 0·H' == H): skip the branch's work.
    if wplus is not None and wplus_tokens is not None and not (isinstance(scale, (int, float)) and scale == 0):
        q2 = _heads(wplus.to_q_wplus(out), heads)
        k2 = _heads(wplus.to_k_wplus(wplus_tokens), heads)
        v2 = _heads(wplus.to_v_wplus(wplus_tokens), heads)
        extra = _merge(F.scaled_dot_product_attention(q2, k2, v2, attn_mask=None, dropout_p=0.0, is_causal=False))
        if isinstance(scale, torch.Tensor):
            scale = scale.to(dtype=out.dtype, device=out.device).reshape(-1, 1, 1)
        out = out + scale * extra.to(out.dtype)

    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


def processor_hidden_size(name: str, block_out_channels: tuple[int, ...]) -> int:
    """Channel count of the attention layer named `name` (official rule of set_wplus_adapter)."""
    m = _BLOCK.match(name)
    if m is None:
        raise ValueError(f"not a UNet attention processor name: {name}")
    if m.group(1) == "down_blocks":
        return block_out_channels[int(m.group(2))]
    if m.group(1) == "up_blocks":
        return tuple(reversed(block_out_channels))[int(m.group(2))]
    return block_out_channels[-1]


def install_wplus_processors(unet: Any, scale: float = 1.0) -> dict[str, WPlusAttnProcessor]:
    """Install W+ processors on every cross-attention (attn2) and plain ones on attn1.

    Returns the W+ processors by processor name, in `unet.attn_processors` order (the order the
    official `wplus_adapter.bin` indices refer to). Weights are initialised like the official training
    (copies of attn2's q/k/v); load a checkpoint with `apply_adapter_state` afterwards.
    """
    cross_dim = unet.config.cross_attention_dim
    channels = tuple(unet.config.block_out_channels)
    processors: dict[str, Any] = {}
    wplus: dict[str, WPlusAttnProcessor] = {}
    modules = dict(unet.named_modules())
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            processors[name] = SelfAttnProcessor()
            continue
        proc = WPlusAttnProcessor(processor_hidden_size(name, channels), cross_dim, scale=scale)
        layer = modules[name[: -len(".processor")]]
        with torch.no_grad():
            proc.to_k_wplus.weight.copy_(layer.to_k.weight)
            proc.to_v_wplus.weight.copy_(layer.to_v.weight)
            proc.to_q_wplus.weight.copy_(layer.to_q.weight)
        p = next(layer.parameters())
        proc.to(device=p.device, dtype=p.dtype)
        processors[name] = proc
        wplus[name] = proc
    unet.set_attn_processor(processors)
    return wplus


def wplus_processors(unet: Any) -> dict[str, WPlusAttnProcessor]:
    """The installed W+ processors by name (empty if none are installed)."""
    return {k: v for k, v in unet.attn_processors.items() if isinstance(v, WPlusAttnProcessor)}


def adapter_index_names(unet: Any) -> dict[int, str]:
    """Official index → processor name: the position in `unet.attn_processors` (down, up, mid)."""
    return dict(enumerate(unet.attn_processors))


def expected_adapter_shapes(unet: Any) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the official `wplus_adapter` dict for this UNet's architecture."""
    cross_dim = unet.config.cross_attention_dim
    channels = tuple(unet.config.block_out_channels)
    shapes: dict[str, tuple[int, ...]] = {}
    for idx, name in adapter_index_names(unet).items():
        if name.endswith("attn2.processor"):
            c = processor_hidden_size(name, channels)
            shapes[f"{idx}.to_k_wplus.weight"] = (c, cross_dim)
            shapes[f"{idx}.to_v_wplus.weight"] = (c, cross_dim)
            shapes[f"{idx}.to_q_wplus.weight"] = (c, c)
    return shapes


def apply_adapter_state(
    unet: Any,
    wproj: WProj,
    w_proj_state: Mapping[str, torch.Tensor],
    wplus_state: Mapping[str, torch.Tensor],
    source: str = "the adapter file",
) -> None:
    """Load the official `w_proj` / `wplus_adapter` dicts, mapping each index to its processor by name.

    Raises:
        ModelCorrupt: naming the file, the expected layout and the first missing, unexpected or
            wrongly shaped key (e.g. an adapter trained for another UNet).
    """
    layout = "W+ adapter ({'w_proj': WProjModel, 'wplus_adapter': 16 attn2 processors})"
    expected = expected_adapter_shapes(unet)
    _check(wplus_state, expected, source, layout, "wplus_adapter.")
    _check(w_proj_state, {k: tuple(v.shape) for k, v in wproj.state_dict().items()}, source, layout, "w_proj.")
    procs = wplus_processors(unet)
    names = adapter_index_names(unet)
    with torch.no_grad():
        for key, tensor in wplus_state.items():
            idx, sub = key.split(".", 1)
            proc = procs[names[int(idx)]]
            dict(proc.named_parameters())[sub].copy_(tensor)
        wproj.load_state_dict({k: v.to(torch.float32) for k, v in w_proj_state.items()}, strict=True)


def _check(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], source: str, layout: str, prefix: str
) -> None:
    for key, shape in expected.items():
        if key not in state:
            raise ModelCorrupt(
                f"{source} does not have the {layout} layout: key '{prefix}{key}' is missing.",
                "Use the official wplus_adapter.bin (or its safetensors conversion) for an SD1.5 UNet.",
            )
        if tuple(state[key].shape) != tuple(shape):
            raise ModelCorrupt(
                f"{source} does not have the {layout} layout: '{prefix}{key}' has shape "
                f"{tuple(state[key].shape)}, expected {tuple(shape)}.",
                "The adapter was made for another base model; W+ adapters need an SD1.5 UNet.",
            )
    for key in state:
        if key not in expected:
            raise ModelCorrupt(
                f"{source} does not have the {layout} layout: unexpected key '{prefix}{key}'.",
                "Use the official wplus_adapter.bin (or its safetensors conversion).",
            )


def load_wplus_adapter(unet: Any, path: Any, scale: float = 1.0) -> WProj:
    """Install the W+ processors into `unet`, load `path` (official .bin or our .safetensors), return WProj."""
    ckpt = load_adapter_checkpoint(path)
    wproj = WProj(unet.config.cross_attention_dim)
    install_wplus_processors(unet, scale=scale)
    p = next(unet.parameters())
    apply_adapter_state(unet, wproj, ckpt.w_proj, ckpt.wplus_adapter, source=str(path))
    wproj.to(device=p.device, dtype=p.dtype).eval()
    return wproj


# -- the adapter file -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AdapterCheckpoint:
    """A W+ adapter checkpoint.

    Attributes:
        w_proj: WProjModel state (`proj_0..3.weight`, `norm.weight`, `norm.bias`).
        wplus_adapter: processor weights keyed by the official index strings (`'1.to_k_wplus.weight'`, …),
            index = position of the processor in `unet.attn_processors`.
    """

    w_proj: dict[str, torch.Tensor]
    wplus_adapter: dict[str, torch.Tensor]

    @property
    def cross_attention_dim(self) -> int:
        return int(self.w_proj["norm.weight"].shape[0])

    @property
    def processor_indices(self) -> tuple[int, ...]:
        """Indices (in `unet.attn_processors` order) of the processors that carry weights."""
        return tuple(sorted({int(k.split(".", 1)[0]) for k in self.wplus_adapter}))



def sd15_adapter_layout(cross_attention_dim: int = 768) -> dict[str, tuple[int, ...]]:
    """The official SD1.5 `wplus_adapter` layout (REFERENCE.md §3.4): index → to_k/to_v/to_q shapes."""
    # hidden size of the 16 cross-attention processors in `unet.attn_processors` order
    # (down 0,0,1,1,2,2; up 1×3, 2×3, 3×3; mid last)
    hidden = (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280)
    out: dict[str, tuple[int, ...]] = {}
    for j, c in enumerate(hidden):
        i = 2 * j + 1
        out[f"{i}.to_k_wplus.weight"] = (c, cross_attention_dim)
        out[f"{i}.to_v_wplus.weight"] = (c, cross_attention_dim)
        out[f"{i}.to_q_wplus.weight"] = (c, c)
    return out


def wproj_layout(cross_attention_dim: int = 768) -> dict[str, tuple[int, ...]]:
    """WProjModel's state layout (REFERENCE.md §3.1)."""
    out: dict[str, tuple[int, ...]] = {k: (cross_attention_dim, n) for k, n in _WPROJ_INPUTS.items()}
    out["norm.weight"] = (cross_attention_dim,)
    out["norm.bias"] = (cross_attention_dim,)
    return out


def _check_adapter_structure(ckpt: AdapterCheckpoint, p: Path) -> None:
    """Shape-consistency checks that hold for any UNet size (tiny test UNets included)."""
    from engine.models.safe_load import check_layout, shape_of

    norm = ckpt.w_proj.get("norm.weight")
    cross = shape_of(norm)
    if cross is None or len(cross) != 1:
        raise ModelCorrupt(f"{p} does not have the W+ adapter layout: key 'w_proj.norm.weight' is missing.",
                           REDOWNLOAD_HINT)
    check_layout(ckpt.w_proj, wproj_layout(cross[0]), p, "W+ adapter (w_proj)")
    if not ckpt.wplus_adapter:
        raise ModelCorrupt(f"{p} does not have the W+ adapter layout: 'wplus_adapter' is empty.", REDOWNLOAD_HINT)
    expected: dict[str, tuple[int, ...]] = {}
    for key, value in ckpt.wplus_adapter.items():
        m = _ADAPTER_KEY.match(key)
        shape = shape_of(value)
        if m is None or shape is None or len(shape) != 2:
            raise ModelCorrupt(f"{p} does not have the W+ adapter layout: unexpected key 'wplus_adapter.{key}'.",
                               REDOWNLOAD_HINT)
        c = shape[0]
        idx = m.group(1)
        expected.setdefault(f"{idx}.to_k_wplus.weight", (c, cross[0]))
        expected.setdefault(f"{idx}.to_v_wplus.weight", (c, cross[0]))
        expected.setdefault(f"{idx}.to_q_wplus.weight", (c, c))
    check_layout(ckpt.wplus_adapter, expected, p, "W+ adapter (wplus_adapter)")


def load_adapter_checkpoint(
    path: str | os.PathLike[str], expected_adapter: Mapping[str, tuple[int, ...]] | None = None
) -> AdapterCheckpoint:
    """Load and check a W+ adapter (official `wplus_adapter.bin` or our safetensors conversion).

    Args:
        path: the adapter file.
        expected_adapter: optional exact `wplus_adapter` layout (e.g. `sd15_adapter_layout()`); without it
            only the structure is checked (key names, 2-D weights, consistent to_q/to_k/to_v shapes), so
            adapters for smaller test UNets load too. The UNet-side loader checks against the real UNet.

    Returns:
        The `w_proj` and `wplus_adapter` states (keys as in the official file's sub-dictionaries).

    Raises:
        ModelMissing, UnsafeCheckpoint: as `load_state`.
        ModelCorrupt: damaged file, or not the adapter layout (message names the first offending key).
    """
    from engine.models.safe_load import as_tensor_dict, load_state_with_metadata, strip_prefix

    p = Path(path)
    obj, metadata = load_state_with_metadata(p)
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        if metadata.get(LAYOUT_KEY, LAYOUT_ADAPTER) != LAYOUT_ADAPTER:
            raise ModelCorrupt(f"{p} is a converted '{metadata[LAYOUT_KEY]}' file, not a W+ adapter.")
        others = [k for k in obj if not k.startswith(("w_proj.", "wplus_adapter."))]
        if others:
            raise ModelCorrupt(f"{p} does not have the W+ adapter layout: unexpected key '{others[0]}'.",
                               REDOWNLOAD_HINT)
        ckpt = AdapterCheckpoint(w_proj=strip_prefix(obj, "w_proj."), wplus_adapter=strip_prefix(obj, "wplus_adapter."))
    else:
        if "w_proj" not in obj or "wplus_adapter" not in obj:
            raise ModelCorrupt(
                f"{p} does not have the W+ adapter layout: the top-level keys 'w_proj' and 'wplus_adapter' "
                f"are required, found {sorted(map(str, obj))[:6]}.",
                "Use wplus_adapter.bin (stage 2) or wplus_adapter_stage1.bin.",
            )
        ckpt = AdapterCheckpoint(
            w_proj=as_tensor_dict(obj["w_proj"], p, "w_proj"),
            wplus_adapter=as_tensor_dict(obj["wplus_adapter"], p, "wplus_adapter"),
        )
    _check_adapter_structure(ckpt, p)
    if expected_adapter is not None:
        from engine.models.safe_load import check_layout

        check_layout(ckpt.wplus_adapter, expected_adapter, p, "W+ adapter (wplus_adapter)")
    return ckpt


class WPlusUNet(nn.Module):
    """The UNet component of the IO spec: identity tokens and the W+ scale are runtime inputs.

    forward(sample B×4×h×w, timestep B, text_embeds B×77×768, wplus_tokens B×4×768, wplus_scale (1,))
    → noise_pred B×4×h×w. A float `wplus_scale` of 0 skips the W+ branch (bit-identical to SD1.5).
    """

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        wplus_tokens: torch.Tensor,
        wplus_scale: torch.Tensor | float,
        control: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        tokens = torch.cat([text_embeds, wplus_tokens.to(text_embeds.dtype)], dim=1)
        # `control`: ControlNet residuals (down blocks…, mid), added inside the UNet that carries the W+ processors.
        down, mid = (tuple(control[:-1]), control[-1]) if control else (None, None)
        return self.unet(
            sample, timestep, encoder_hidden_states=tokens, cross_attention_kwargs={"wplus_scale": wplus_scale},
            down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
        )[0]
