"""Pickle → safetensors, once: after the conversion no later load of the file needs a pickle.

Handles the official layouts (REFERENCE.md §2.1, §3.4):

* e4e `{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg': 18×512, 'opts': dict, …}` →
  flat `encoder.*`, `decoder.*`, `latent_avg`, opts as JSON in the metadata;
* W+ adapter `{'w_proj': {...}, 'wplus_adapter': {'1.to_k_wplus.weight', …}}` → flat `w_proj.*`,
  `wplus_adapter.*`;
* plain state dicts (ParseNet), optionally wrapped as `{'state_dict': …}`: the same keys.

The metadata entry `wplus_layout` names the layout, so the loaders can refuse a converted file of the
wrong kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from engine.errors import ModelCorrupt
from engine.models.safe_load import (
    LAYOUT_ADAPTER,
    LAYOUT_E4E,
    LAYOUT_KEY,
    LAYOUT_STATE_DICT,
    REDOWNLOAD_HINT,
    SAFETENSORS_SUFFIX,
    as_tensor_dict,
    load_state_with_metadata,
)

if TYPE_CHECKING:
    import torch

_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


def _write_safetensors(fh: BinaryIO, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Stream tensors in the safetensors format (8-byte header length, JSON header, raw little-endian data).

    Written tensor by tensor so a 1.2 GB checkpoint never needs a second full copy in memory.
    """
    import sys

    import torch

    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise RuntimeError("safetensors conversion needs a little-endian machine")
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    order = list(tensors)
    for k in order:
        t = tensors[k]
        name = str(t.dtype).removeprefix("torch.")
        if name not in _ST_DTYPES:
            raise ModelCorrupt(f"tensor '{k}' has dtype {t.dtype}, which safetensors cannot store.")
        nbytes = t.numel() * t.element_size()
        header[k] = {"dtype": _ST_DTYPES[name], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment with spaces
    fh.write(len(raw).to_bytes(8, "little"))
    fh.write(raw)
    for k in order:
        t = tensors[k].detach().to("cpu").contiguous().reshape(-1)
        if t.numel():
            fh.write(t.view(torch.uint8).numpy().data)


def _flatten_for_safetensors(
    obj: Mapping[str, Any], src: Path, tensors_only: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import torch

    if "state_dict" in obj and "latent_avg" in obj:
        flat = dict(as_tensor_dict(obj["state_dict"], src, "state_dict"))
        if not isinstance(obj["latent_avg"], torch.Tensor):
            raise ModelCorrupt(f"{src}: 'latent_avg' is not a tensor.", REDOWNLOAD_HINT)
        flat["latent_avg"] = obj["latent_avg"]
        opts = obj.get("opts") or {}
        opts = dict(opts) if isinstance(opts, Mapping) else {}
        # training-only entries (optimizer, discriminator, global_step) are dropped on purpose
        return flat, {LAYOUT_KEY: LAYOUT_E4E, "opts": json.dumps(opts, default=str, sort_keys=True)}
    if "w_proj" in obj and "wplus_adapter" in obj:
        flat = {f"w_proj.{k}": v for k, v in as_tensor_dict(obj["w_proj"], src, "w_proj").items()}
        flat.update({f"wplus_adapter.{k}": v for k, v in as_tensor_dict(obj["wplus_adapter"], src, "wplus_adapter").items()})
        return flat, {LAYOUT_KEY: LAYOUT_ADAPTER}
    # a wrapped state dict ({'state_dict': ..., 'global_step': ...}, Lightning style) keeps only the weights
    inner = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    if tensors_only:
        inner = {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    return as_tensor_dict(inner, src, "state_dict"), {LAYOUT_KEY: LAYOUT_STATE_DICT}


def convert_to_safetensors(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    check: Callable[[Mapping[str, torch.Tensor]], None] | None = None,
    tensors_only: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Convert an official pickled checkpoint to safetensors so later loads need no pickle.

    Handles the e4e layout (flattened to `encoder.*`, `decoder.*`, `latent_avg`, opts as JSON metadata),
    the W+ adapter layout (`w_proj.*`, `wplus_adapter.*`) and plain state dicts (ParseNet). Shared or
    non-contiguous tensors are written as independent copies. The write is atomic.

    Args:
        src: the pickled file (read with `weights_only=True`).
        dst: the `.safetensors` file to write (replaced if present).
        check: called with the tensors to write before anything is written (raise to refuse).
        tensors_only: a plain or wrapped state dict keeps only its tensors (an SD1.5 `.ckpt` may carry
            other entries, which its loader ignores as well); otherwise a non-tensor entry is refused.
        metadata: extra metadata entries (e.g. `format: pt`, which transformers requires).

    Returns:
        `dst` as a Path.

    Raises:
        ModelMissing, UnsafeCheckpoint, ModelCorrupt: as `load_state` (the source is never executed).
        StorageError: the output could not be written.
    """
    from engine.fileio import atomic_write_with

    src_p, dst_p = Path(src), Path(dst)
    if dst_p.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(f"the conversion target must end in {SAFETENSORS_SUFFIX}: {dst_p}")
    obj, metadata = load_state_with_metadata(src_p)
    if src_p.suffix.lower() == SAFETENSORS_SUFFIX:
        flat, meta = obj, metadata  # already safe: a plain (re)write
    else:
        flat, meta = _flatten_for_safetensors(obj, src_p, tensors_only)
    if check is not None:
        check(flat)
    meta = {**meta, **(metadata or {})}
    atomic_write_with(dst_p, lambda fh: _write_safetensors(fh, flat, meta))
    return dst_p
