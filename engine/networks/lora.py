"""SD1.5 LoRA files applied to the UNet and the CLIP text encoder, each with its own weight.

Layouts read (key names as in the files artists download):

* kohya / A1111 / civitai: `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha` and
  `lora_te_<module>.…` where `<module>` is the diffusers module path with `_` for `.`
  (`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`,
  `lora_te_text_model_encoder_layers_0_self_attn_q_proj`); LoCon adds the ResNet convolutions
  (`…resnets_0_conv1`, down [r, in, k, k], up [out, r, 1, 1]);
* the same with the LDM/SGM UNet's block names (older kohya sd-scripts, SGM trainers):
  `lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q`, `…input_blocks_4_0_in_layers_2`,
  `…middle_block_1_proj_in`, `…output_blocks_2_1_conv` (see `ldm_block_names`);
* diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight` (and `text_encoder.…`), the older
  `lora.down` / `lora.up` and attention-processor (`processor.to_q_lora.down`) spellings, optional `.alpha`.

Each layer adds `weight · (alpha / rank) · up @ down` to its module's weight (alpha absent: alpha = rank,
as kohya). The UNet part is scaled by `LoraSpec.weight`, the text-encoder part by `LoraSpec.text`.

Fused vs unfused: `LoraPatcher.apply(..., fused=True)` (the product) adds the deltas into the weights once
per LoRA set — a step then costs exactly a plain step, and the W+ processors, which call the layer's own
`to_q/to_k/to_v/to_out`, see the patched projections with no change (their own `to_*_wplus` weights are
the adapter's and are never patched). The originals are kept (in host memory, whatever the model's device)
and restored exactly when the set changes.
`fused=False` adds `up(down(x))` in forward hooks instead (PEFT's way); it exists for the bench
(`bench/cpu.py` reports both) and gives the same images within float rounding.

SD 2.x and SDXL LoRAs, DoRA and LyCORIS LoHa/LoKr files are refused by name; a file any of whose layers does not match the model is refused
saying how many matched (applied in part it would not give its author's images).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InvalidInput, ModelMissing, WrongModelFamily

_HINT = "Use an SD1.5 LoRA: the W+ adapter works with SD1.5 models only."
_PEFT_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder", "te.": "text_encoder"}


@dataclass(frozen=True, eq=False)
class LoraLayer:
    """One low-rank update: component ("unet" / "text_encoder"), module key, down, up, alpha/rank."""

    component: str
    key: str  # the module path with "_" for "." (kohya) or with dots (PEFT); resolved by `module_index`
    down: torch.Tensor
    up: torch.Tensor
    scale: float

    def delta(self, shape: Sequence[int]) -> torch.Tensor:
        """up @ down, float32, shaped like the target weight (Linear, 1×1 or k×k convolution)."""
        down = self.down.float().flatten(1)
        up = self.up.float().flatten(1)
        return (up @ down).reshape(tuple(shape)) * self.scale


@dataclass(frozen=True, eq=False)
class LoraFile:
    """A parsed LoRA file: its layers, how many keys it had, and its A1111 short hash."""

    path: Path
    layers: tuple[LoraLayer, ...]
    short_hash: str  # sha256 of the whole file, first 10 hex digits (A1111's "AutoV2")

    @property
    def name(self) -> str:
        return self.path.stem


def file_short_hash(path: Path) -> str:
    """A1111's LoRA hash: the sha256 of the file, first 10 hex digits."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:10]


# LyCORIS / DoRA formats: tensors the low-rank product alone does not account for.
_UNREAD_KINDS = {"DoRA (weight-decomposed LoRA)": (".dora_scale", ".lora_magnitude_vector"),
                 "LyCORIS LoHa": (".hada_w1_a",), "LyCORIS LoKr": (".lokr_w1",)}


def _refuse(path: Path, family: str) -> WrongModelFamily:
    return WrongModelFamily(f"{path.name} is {family}, not an SD1.5 LoRA.", _HINT)


def lora_family(layers: Iterable[LoraLayer], keys: Iterable[str]) -> str:
    """"sd15", or the family the LoRA was trained for (from its key names and input widths)."""
    keys = list(keys)
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.", "te1.", "te2.")) for k in keys):
        return "an SDXL LoRA"
    for layer in layers:
        # SD1.5/2.x attention blocks hold one transformer block; SDXL's hold 2 or 10 (in LDM block names its
        # input_blocks_4_1/7_1 otherwise pass for SD1.5's, at the same widths)
        if layer.component == "unet" and re.search(r"transformer_blocks[._]([1-9]|\d\d)", layer.key):
            return "an SDXL LoRA (several transformer blocks per attention)"
        width = layer.down.shape[1] if layer.down.ndim >= 2 else 0
        cross = layer.component == "unet" and re.search(r"attn2[._]to_[kv]$", layer.key)
        if cross and width == 2048:
            return "an SDXL LoRA"
        if cross and width == 1024:
            return "an SD 2.x LoRA (1024-wide cross-attention)"
        if layer.component == "text_encoder" and width in (1024, 1280):
            return "an SD 2.x LoRA (OpenCLIP text encoder)" if width == 1024 else "an SDXL LoRA"
    return "sd15"


def parse_lora_state(state: Mapping[str, torch.Tensor]) -> list[LoraLayer]:
    """The layers of a LoRA state dict in any supported layout (unmatched to a model yet)."""
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        comp, mod, part = _split_key(k)
        if comp is None:
            continue
        groups.setdefault((comp, mod), {})[part] = v
    layers = []
    for (comp, mod), parts in groups.items():
        if "down" not in parts or "up" not in parts:
            continue
        rank = parts["down"].shape[0]
        alpha = float(parts["alpha"].float().item()) if "alpha" in parts else float(rank)
        layers.append(LoraLayer(comp, mod, parts["down"], parts["up"], alpha / rank))
    return layers


def _split_key(key: str) -> tuple[str | None, str, str]:
    """(component, module key, "down"/"up"/"alpha") of one tensor name, component None if not LoRA."""
    for prefix, comp in (("lora_unet_", "unet"), ("lora_te_", "text_encoder")):
        if key.startswith(prefix):
            mod, _, rest = key[len(prefix):].partition(".")
            part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(rest)
            return (comp, mod, part) if part else (None, "", "")
    for prefix, comp in _PEFT_PREFIXES.items():
        if key.startswith(prefix):
            body = key[len(prefix):]
            for suffix, part in ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
                                 (".lora.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
                                 (".lora_linear_layer.up.weight", "up"), (".alpha", "alpha")):
                if body.endswith(suffix):
                    mod = body[: -len(suffix)]
                    # the attention-processor spelling: attn1.processor.to_q_lora → attn1.to_q
                    mod = re.sub(r"\.processor\.(to_[qkv])_lora$", r".\1", mod)
                    mod = re.sub(r"\.processor\.to_out_lora$", ".to_out.0", mod)
                    return comp, mod, part
    return None, "", ""


def read_lora(path: str | Path) -> LoraFile:
    """Read and check a LoRA file (.safetensors, or a pickle loaded with weights_only=True).

    Raises:
        ModelMissing: no such file.
        WrongModelFamily: an SDXL / SD 2.x LoRA, a DoRA / LoHa / LoKr file, or not a LoRA at all.
        ModelCorrupt, UnsafeCheckpoint: unreadable file.
    """
    from engine.models.safe_load import load_state

    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelMissing(f"LoRA file not found: {p}.", "Check the --lora path (relative to the current folder).")
    state = load_state(p)
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    layers = parse_lora_state(state)
    family = lora_family(layers, state)
    if family != "sd15":
        raise _refuse(p, family)
    kinds = sorted({kind for k in state for kind, marks in _UNREAD_KINDS.items() if any(m in k for m in marks)})
    if kinds:
        # read as a plain LoRA these would act without their extra factors: another image, silently
        raise WrongModelFamily(f"{p.name} is a {' and '.join(kinds)} file, which W+ Studio does not read.",
                               "Use a LoRA or LoCon file (kohya lora_down/lora_up, or diffusers/PEFT lora_A/lora_B).")
    if not layers:
        raise _refuse(p, "not a LoRA (no lora_down/lora_up or lora_A/lora_B pairs)")
    return LoraFile(p, tuple(layers), file_short_hash(p))


# ResNet sublayers: diffusers name → LDM/SGM name (the original UNet's Sequential indices).
_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def ldm_block_names(unet: nn.Module) -> dict[str, str]:
    """diffusers UNet block path → the LDM/SGM UNet's name for it, from the model's own structure.

    The LDM UNet numbers its blocks in one sequence per side: `input_blocks.0.0` is conv_in, then per down
    block one `input_blocks.i` per ResNet (`.0`, its attention `.1`) and one for the downsampler
    (`input_blocks.i.0.op`); `middle_block.0/1/2` is ResNet, attention, ResNet; `output_blocks.i` holds an up
    block's ResNet `.0`, attention `.1` and, in the block's last entry, the upsampler (`.2.conv` after an
    attention, `.1.conv` without one). For SD1.5 (2 ResNets per down block, 3 per up block) this is
    input_blocks 1..11 → down_blocks[(i-1)//3], output_blocks i → up_blocks[i//3].
    """
    out = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    i = 0
    for b, block in enumerate(getattr(unet, "down_blocks", ())):
        attns = getattr(block, "attentions", None) or ()
        for j in range(len(block.resnets)):
            i += 1
            out[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{i}.0"
            if j < len(attns):
                out[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{i}.1"
        if getattr(block, "downsamplers", None):
            i += 1
            out[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{i}.0.op"
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        attns = getattr(mid, "attentions", None) or ()
        for j in range(len(mid.resnets)):
            out[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j if attns else j}"
            if j < len(attns):
                out[f"mid_block.attentions.{j}"] = f"middle_block.{2 * j + 1}"
    i = 0
    for b, block in enumerate(getattr(unet, "up_blocks", ())):
        attns = getattr(block, "attentions", None) or ()
        for j in range(len(block.resnets)):
            out[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{i}.0"
            if j < len(attns):
                out[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{i}.1"
            if j == len(block.resnets) - 1 and getattr(block, "upsamplers", None):
                out[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{i}.{2 if attns else 1}.conv"
            i += 1
    return out


def _ldm_name(name: str, blocks: Mapping[str, str]) -> str | None:
    """The LDM/SGM name of a diffusers UNet module path (None outside the numbered blocks)."""
    parts = name.split(".")
    for cut in range(min(len(parts), 5), 0, -1):
        ldm = blocks.get(".".join(parts[:cut]))
        if ldm is None:
            continue
        rest = parts[cut:]
        if rest and "resnets" in parts[:cut]:
            rest = [_LDM_RESNET.get(rest[0], rest[0]), *rest[1:]]
        return ".".join([ldm, *rest])
    return None


def module_index(root: nn.Module, component: str) -> dict[str, nn.Linear | nn.Conv2d]:
    """Linear/Conv2d modules of a component by every name a LoRA may use for them.

    Both kohya's `_` spelling and the dotted path, with and without the CLIP `text_model.` prefix
    (transformers 5 drops it in memory, files keep it); UNet modules also by their LDM/SGM name
    (`input_blocks_4_0_in_layers_2`, older kohya and SGM-trained files; `ldm_block_names`). The W+
    processors' own projections are left out: they are the adapter's weights, never a LoRA target.
    """
    index: dict[str, nn.Linear | nn.Conv2d] = {}
    blocks = ldm_block_names(root) if component == "unet" else {}
    for name, mod in root.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Conv2d)) or ".processor." in name:
            continue
        names = {name}
        if component == "text_encoder":
            bare = name.removeprefix("text_model.")
            names |= {bare, "text_model." + bare}
        ldm = _ldm_name(name, blocks) if blocks else None
        if ldm is not None:
            names.add(ldm)
        for n in names:
            index[n] = mod
            index[n.replace(".", "_")] = mod
    return index


def _fits(weight: torch.Tensor, layer: LoraLayer) -> bool:
    """up @ down has the weight's shape (out channels, and in channels × kernel)."""
    return layer.up.shape[0] == weight.shape[0] and layer.down[0].numel() == weight[0].numel()


@dataclass
class _Target:
    module: nn.Linear | nn.Conv2d
    deltas: list[tuple[LoraLayer, float]] = field(default_factory=list)


class LoraPatcher:
    """Applies LoRA sets to one UNet and one text encoder, and takes them off again exactly.

    Args:
        unet: the diffusers UNet (W+ processors may be installed).
        text_encoder: the CLIPTextModel.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        self.roots = {"unet": unet, "text_encoder": text_encoder}
        self._originals: dict[int, tuple[nn.Linear | nn.Conv2d, torch.Tensor]] = {}
        self._hooks: list[Any] = []
        self._files: dict[tuple[str, int, float], LoraFile] = {}
        self.key: tuple[Any, ...] = ()
        self.fused = True

    def read(self, path: str | Path) -> LoraFile:
        """`read_lora`, cached by (path, size, mtime)."""
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            return read_lora(p)
        k = (str(p), st.st_size, st.st_mtime)
        if k not in self._files:
            self._files[k] = read_lora(p)
        return self._files[k]

    def apply(self, specs: Sequence[Any], *, fused: bool = True) -> tuple[LoraFile, ...]:
        """Make `specs` (engine.api.LoraSpec) the applied LoRA set; () removes every LoRA.

        Returns:
            The parsed files, in order (for hashes and metadata).

        Raises:
            InvalidInput: a LoRA with layers this model lacks (says how many matched), or one layer named twice.
            ModelMissing, WrongModelFamily, ModelCorrupt: from `read_lora`.
        """
        files = tuple(self.read(s.path) for s in specs)
        key = (tuple((f.short_hash, s.weight, s.text) for f, s in zip(files, specs)), fused)
        if key == self.key:
            return files
        targets = self._match(files, specs)
        self.clear()
        with torch.no_grad():
            for t in targets.values():
                if fused:
                    self._fuse(t)
                else:
                    self._hook(t)
        self.key, self.fused = key, fused
        return files

    def _match(self, files: Sequence[LoraFile], specs: Sequence[Any]) -> dict[int, _Target]:
        indexes = {c: module_index(r, c) for c, r in self.roots.items()}
        targets: dict[int, _Target] = {}
        for f, spec in zip(files, specs):
            found: list[tuple[LoraLayer, nn.Linear | nn.Conv2d]] = []
            missed: list[LoraLayer] = []
            seen: dict[int, LoraLayer] = {}
            for layer in f.layers:
                mod = indexes[layer.component].get(layer.key)
                if mod is None or not _fits(mod.weight, layer):
                    missed.append(layer)
                    continue
                if id(mod) in seen:
                    raise InvalidInput(
                        f"The LoRA {f.path.name} names one layer twice ({seen[id(mod)].key} and {layer.key}).",
                        "Its diffusers and LDM block names overlap; re-save it with one layout.",
                    )
                seen[id(mod)] = layer
                found.append((layer, mod))
            if missed:
                # A LoRA applied in part would silently give another image than its author's: refuse it.
                some = ", ".join(f"{m.component}:{m.key}" for m in missed[:3]) + (" …" if len(missed) > 3 else "")
                raise InvalidInput(
                    f"The LoRA {f.path.name} does not fit this model: {len(found)} of {len(f.layers)} layers "
                    f"matched (not found or of another shape: {some}).",
                    "It was made for another model architecture, or uses a layout W+ Studio does not read "
                    "(kohya lora_unet_*/lora_te_* with diffusers or LDM block names, diffusers/PEFT lora_A/lora_B).",
                )
            for layer, mod in found:
                w = float(spec.weight if layer.component == "unet" else spec.text)
                targets.setdefault(id(mod), _Target(mod)).deltas.append((layer, w))
        return targets

    def _fuse(self, t: _Target) -> None:
        weight = t.module.weight
        # The backup lives in host memory (a full LoCon touches most of the UNet: on a GPU a device copy
        # would double its memory); copying it back is exact, whatever the device.
        self._originals[id(t.module)] = (t.module, weight.detach().to("cpu", copy=True))
        total = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for layer, w in t.deltas:
            total += w * layer.delta(weight.shape).to(weight.device)
        weight.copy_((weight.float() + total).to(weight.dtype))

    def _hook(self, t: _Target) -> None:
        mod = t.module
        p = mod.weight
        parts = [(layer.down.to(p.device, p.dtype), layer.up.to(p.device, p.dtype), w * layer.scale)
                 for layer, w in t.deltas]

        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            for down, up, s in parts:
                if isinstance(module, nn.Conv2d):
                    h = F.conv2d(x, down.reshape(down.shape[0], *module.weight.shape[1:]) if down.ndim == 2 else down,
                                 None, module.stride, module.padding, module.dilation, module.groups)
                    output = output + s * F.conv2d(h, up.reshape(up.shape[0], up.shape[1], 1, 1))
                else:
                    output = output + s * F.linear(F.linear(x, down.flatten(1)), up.flatten(1))
            return output

        self._hooks.append(mod.register_forward_hook(hook))

    def clear(self) -> None:
        """Remove every LoRA: original weights restored bit for bit, hooks removed."""
        with torch.no_grad():
            for mod, orig in self._originals.values():
                mod.weight.copy_(orig)
        self._originals.clear()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.key = ()
