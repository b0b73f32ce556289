"""Safe checkpoint loading, layout checks and pickle → safetensors conversion.

Every loader in the project goes through `load_state`: safetensors are read directly; pickled torch
files only with `torch.load(weights_only=True, map_location="cpu")`, so a file carrying code is refused
before anything in it runs. Layout checks report the file, the expected layout and the first key that
does not fit, so a user can tell a truncated download from a wrong file.

Layouts handled (REFERENCE.md §2.1, §3.4):

* e4e: official `{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg': 18×512, 'opts': dict, …}`;
  our safetensors: flat `encoder.*`, `decoder.*`, `latent_avg`, opts as JSON in the metadata.
* W+ adapter: official `{'w_proj': {...}, 'wplus_adapter': {'1.to_k_wplus.weight', …}}`;
  our safetensors: flat `w_proj.*`, `wplus_adapter.*`.
* plain state dicts (ParseNet): the same keys in both formats.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from engine.errors import ModelCorrupt, ModelMissing, UnsafeCheckpoint

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
LAYOUT_KEY = "wplus_layout"  # safetensors metadata entry naming the layout of a converted file
LAYOUT_E4E = "e4e"
LAYOUT_ADAPTER = "wplus_adapter"
LAYOUT_STATE_DICT = "state_dict"

_REDOWNLOAD_HINT = "The file is truncated, damaged or not the expected model: download it again or re-import it."
_ADAPTER_KEY = re.compile(r"^(\d+)\.to_(q|k|v)_wplus\.weight$")
_WPROJ_INPUTS = {"proj_0.weight": 2048, "proj_1.weight": 2048, "proj_2.weight": 2048, "proj_3.weight": 3072}


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


# -- reading --------------------------------------------------------------------------------------


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ModelMissing(f"Model file not found: {path}.", "Check the models folder or run `wplus models fetch`.")
    if not path.is_file():
        raise ModelCorrupt(f"{path} is not a file.", "Point to the model file itself, not a folder.")


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except PermissionError as exc:
        raise ModelMissing(f"No permission to read {path}.", "Fix the file's permissions.") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError and sometimes OSError/ValueError
        raise ModelCorrupt(f"{path} is not a readable safetensors file ({exc}).", _REDOWNLOAD_HINT) from exc
    return tensors, metadata


def _load_pickle(path: Path) -> Any:
    import pickle

    import torch

    try:
        return torch.load(str(path), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" in text or "global" in text:
            # the pickle names a callable or class: weights_only refused it before running anything
            raise UnsafeCheckpoint(
                f"{path} was refused for safety: it is a pickle that would run code or build arbitrary "
                "Python objects when loaded, so it was not loaded.",
                "Use the official file from its original source, or a .safetensors version of it. "
                "Files that need code to load cannot be converted safely.",
            ) from None
        raise ModelCorrupt(
            f"{path} is not a PyTorch checkpoint that can be read safely (unexpected pickle content).",
            _REDOWNLOAD_HINT,
        ) from None
    except PermissionError as exc:
        raise ModelMissing(f"No permission to read {path}.", "Fix the file's permissions.") from exc
    except (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, AttributeError) as exc:
        # truncated zip (OSError/RuntimeError), truncated legacy pickle (EOFError), garbage
        raise ModelCorrupt(f"{path} is truncated or damaged and cannot be loaded ({type(exc).__name__}).",
                           _REDOWNLOAD_HINT) from exc


def load_state_with_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Like `load_state`, also returning the safetensors metadata (empty for pickles)."""
    p = Path(path)
    _check_exists(p)
    suffix = p.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(p)
    if suffix in PICKLE_SUFFIXES:
        obj = _load_pickle(p)
        if not isinstance(obj, dict):
            raise ModelCorrupt(f"{p} holds a {type(obj).__name__}, not a dictionary of weights.", _REDOWNLOAD_HINT)
        return obj, {}
    raise ModelCorrupt(
        f"{p} has an unknown model file type '{p.suffix}'.",
        f"Use a .safetensors file or a PyTorch file ({', '.join(PICKLE_SUFFIXES)}).",
    )


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint's top-level dictionary without running code from it.

    Args:
        path: a `.safetensors` file (flat name → tensor) or a pickled PyTorch file
            (`.pt/.pth/.bin/.ckpt`, loaded with `weights_only=True` on the CPU; may be nested).

    Returns:
        The dictionary stored in the file.

    Raises:
        ModelMissing: the file does not exist or cannot be read.
        UnsafeCheckpoint: the pickle would run code or build arbitrary objects; refused unexecuted.
        ModelCorrupt: truncated, damaged, not a dictionary, or an unknown file type.
    """
    return load_state_with_metadata(path)[0]


def load_tensor_file(path: str | os.PathLike[str]) -> torch.Tensor:
    """Load a file that holds a single tensor (an official W+ `.pth`) safely on the CPU.

    Raises:
        ModelMissing, UnsafeCheckpoint, ModelCorrupt: as `load_state`.
    """
    import torch

    p = Path(path)
    _check_exists(p)
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        tensors, _ = _load_safetensors(p)
        if len(tensors) != 1:
            raise ModelCorrupt(f"{p} holds {len(tensors)} tensors, expected exactly one.")
        return next(iter(tensors.values()))
    obj = _load_pickle(p)
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    raise ModelCorrupt(f"{p} holds a {type(obj).__name__}, not a tensor.")


# -- layout checks --------------------------------------------------------------------------------


def _shape(v: Any) -> tuple[int, ...] | None:
    shape = getattr(v, "shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def check_layout(
    state: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...] | list[int]],
    file: str | os.PathLike[str],
    layout_name: str,
) -> None:
    """Raise ModelCorrupt unless `state` has exactly the keys and shapes of `expected`.

    The message names the file, the layout and the first offending key: expected keys are checked in
    their order (missing or wrong shape), then keys of the file that the layout does not have.

    Args:
        state: key → tensor (anything with `.shape`).
        expected: key → shape.
        file: the file the state came from (for the message).
        layout_name: a human name for the expected layout, e.g. "e4e encoder (IR-SE50)".

    Raises:
        ModelCorrupt: on the first missing, wrongly shaped or unexpected key.
    """
    for key, shape in expected.items():
        want = tuple(int(s) for s in shape)
        if key not in state:
            raise ModelCorrupt(
                f"{file} does not have the {layout_name} layout: key '{key}' is missing "
                f"({len(state)} keys in the file, {len(expected)} expected).",
                _REDOWNLOAD_HINT,
            )
        got = _shape(state[key])
        if got is None:
            raise ModelCorrupt(
                f"{file} does not have the {layout_name} layout: '{key}' is a {type(state[key]).__name__}, "
                "not a tensor.",
                _REDOWNLOAD_HINT,
            )
        if got != want:
            raise ModelCorrupt(
                f"{file} does not have the {layout_name} layout: '{key}' has shape {list(got)}, "
                f"expected {list(want)}.",
                _REDOWNLOAD_HINT,
            )
    for key in state:
        if key not in expected:
            raise ModelCorrupt(
                f"{file} does not have the {layout_name} layout: unexpected key '{key}'.",
                _REDOWNLOAD_HINT,
            )


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    n = len(prefix)
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix)}


def _as_tensor_dict(obj: Any, file: Path, what: str) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(obj, Mapping):
        raise ModelCorrupt(f"{file}: '{what}' is a {type(obj).__name__}, expected a dictionary of tensors.",
                           _REDOWNLOAD_HINT)
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ModelCorrupt(f"{file}: '{what}.{k}' is a {type(v).__name__}, not a tensor.", _REDOWNLOAD_HINT)
    return dict(obj)


# -- e4e ------------------------------------------------------------------------------------------


E4E_PARTS = ("encoder", "decoder")


def _e4e_parts(parts: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(parts))
    unknown = [x for x in chosen if x not in E4E_PARTS]
    if unknown or not chosen:
        raise ValueError(f"e4e parts must be a non-empty selection of {E4E_PARTS}, got {tuple(parts)!r}")
    return chosen


def _load_safetensors_selected(path: Path, keep: Callable[[str], bool]) -> tuple[dict[str, Any], dict[str, str]]:
    """Read only the tensors whose key passes `keep` (safetensors reads each tensor on demand)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys() if keep(k)}  # noqa: SIM118 - no __iter__
            foreign = next((k for k in fh.keys() if k != "latent_avg"  # noqa: SIM118
                            and not k.startswith(("encoder.", "decoder."))), None)
    except PermissionError as exc:
        raise ModelMissing(f"No permission to read {path}.", "Fix the file's permissions.") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError and sometimes OSError/ValueError
        raise ModelCorrupt(f"{path} is not a readable safetensors file ({exc}).", _REDOWNLOAD_HINT) from exc
    if foreign is not None:
        tensors[foreign] = None  # reported as an unexpected key below, without reading it
    return tensors, metadata


def _load_pickle_mapped(path: Path) -> Any:
    """`_load_pickle`, memory-mapping the tensors of a zip-format checkpoint (torch ≥ 1.6 `torch.save`).

    Only the tensors that are used are then read from disk (the official e4e file is zip-format: its
    120 MB decoder loads without reading the 1.07 GB encoder). Legacy pickles are read whole.
    """
    import pickle
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):
        return _load_pickle(path)
    try:
        return torch.load(str(path), weights_only=True, map_location="cpu", mmap=True)
    except pickle.UnpicklingError:
        return _load_pickle(path)  # the same refusal, with the full message
    except (RuntimeError, OSError, ValueError):
        return _load_pickle(path)  # e.g. a file system without mmap: read it whole


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
    import torch

    chosen = _e4e_parts(parts)
    everything = set(chosen) == set(E4E_PARTS)
    prefixes = tuple(f"{x}." for x in chosen)

    def keep(key: str) -> bool:
        return key == "latent_avg" or key.startswith(prefixes)

    p = Path(path)
    _check_exists(p)
    layout = "e4e checkpoint (Encoder4Editing IR-SE50 + latent_avg)"
    suffix = p.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        if everything:
            obj, metadata = _load_safetensors(p)
        else:
            obj, metadata = _load_safetensors_selected(p, keep)
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
            obj = _load_pickle_mapped(p)
            if not isinstance(obj, dict):
                raise ModelCorrupt(f"{p} holds a {type(obj).__name__}, not a dictionary of weights.",
                                   _REDOWNLOAD_HINT)
        else:
            obj, _ = load_state_with_metadata(p)
        if "state_dict" not in obj or "latent_avg" not in obj:
            raise ModelCorrupt(
                f"{p} does not have the {layout} layout: the top-level keys 'state_dict' and 'latent_avg' "
                f"are required, found {sorted(map(str, obj))[:6]}.",
                "Use e4e_ffhq_encode.pt (the FFHQ encoder) for the face encoder.",
            )
        state = _as_tensor_dict(obj["state_dict"], p, "state_dict")
        # foreign keys stay so the layout check below reports them; unused networks are dropped here
        flat = {k: v for k, v in state.items() if keep(k) or not k.startswith(("encoder.", "decoder."))}
        flat["latent_avg"] = obj["latent_avg"]
        opts = obj.get("opts") or {}
        opts = dict(opts) if isinstance(opts, Mapping) else {}
        del obj, state
    if "latent_avg" not in flat:
        raise ModelCorrupt(f"{p} does not have the {layout} layout: key 'latent_avg' is missing.", _REDOWNLOAD_HINT)
    latent_avg = flat["latent_avg"]
    if not isinstance(latent_avg, torch.Tensor) or tuple(latent_avg.shape) != (18, 512):
        raise ModelCorrupt(
            f"{p} does not have the {layout} layout: 'latent_avg' has shape "
            f"{list(_shape(latent_avg) or [])}, expected [18, 512].",
            "Only the StyleGAN2-FFHQ-1024 e4e encoder (18 W+ rows) is supported.",
        )
    others = [k for k in flat if k != "latent_avg" and not k.startswith(("encoder.", "decoder."))]
    if others:
        raise ModelCorrupt(f"{p} does not have the {layout} layout: unexpected key '{others[0]}'.", _REDOWNLOAD_HINT)
    encoder_state = _strip(flat, "encoder.") if "encoder" in chosen else {}
    decoder_state = _strip(flat, "decoder.") if "decoder" in chosen else {}
    if "encoder" in chosen:
        from engine.networks.e4e import e4e_layout

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


# -- W+ adapter -----------------------------------------------------------------------------------


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
    norm = ckpt.w_proj.get("norm.weight")
    cross = _shape(norm)
    if cross is None or len(cross) != 1:
        raise ModelCorrupt(f"{p} does not have the W+ adapter layout: key 'w_proj.norm.weight' is missing.",
                           _REDOWNLOAD_HINT)
    check_layout(ckpt.w_proj, wproj_layout(cross[0]), p, "W+ adapter (w_proj)")
    if not ckpt.wplus_adapter:
        raise ModelCorrupt(f"{p} does not have the W+ adapter layout: 'wplus_adapter' is empty.", _REDOWNLOAD_HINT)
    expected: dict[str, tuple[int, ...]] = {}
    for key, value in ckpt.wplus_adapter.items():
        m = _ADAPTER_KEY.match(key)
        shape = _shape(value)
        if m is None or shape is None or len(shape) != 2:
            raise ModelCorrupt(f"{p} does not have the W+ adapter layout: unexpected key 'wplus_adapter.{key}'.",
                               _REDOWNLOAD_HINT)
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
    p = Path(path)
    obj, metadata = load_state_with_metadata(p)
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        if metadata.get(LAYOUT_KEY, LAYOUT_ADAPTER) != LAYOUT_ADAPTER:
            raise ModelCorrupt(f"{p} is a converted '{metadata[LAYOUT_KEY]}' file, not a W+ adapter.")
        others = [k for k in obj if not k.startswith(("w_proj.", "wplus_adapter."))]
        if others:
            raise ModelCorrupt(f"{p} does not have the W+ adapter layout: unexpected key '{others[0]}'.",
                               _REDOWNLOAD_HINT)
        ckpt = AdapterCheckpoint(w_proj=_strip(obj, "w_proj."), wplus_adapter=_strip(obj, "wplus_adapter."))
    else:
        if "w_proj" not in obj or "wplus_adapter" not in obj:
            raise ModelCorrupt(
                f"{p} does not have the W+ adapter layout: the top-level keys 'w_proj' and 'wplus_adapter' "
                f"are required, found {sorted(map(str, obj))[:6]}.",
                "Use wplus_adapter.bin (stage 2) or wplus_adapter_stage1.bin.",
            )
        ckpt = AdapterCheckpoint(
            w_proj=_as_tensor_dict(obj["w_proj"], p, "w_proj"),
            wplus_adapter=_as_tensor_dict(obj["wplus_adapter"], p, "wplus_adapter"),
        )
    _check_adapter_structure(ckpt, p)
    if expected_adapter is not None:
        check_layout(ckpt.wplus_adapter, expected_adapter, p, "W+ adapter (wplus_adapter)")
    return ckpt


# -- conversion -----------------------------------------------------------------------------------

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


def _flatten_for_safetensors(obj: Mapping[str, Any], src: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import torch

    if "state_dict" in obj and "latent_avg" in obj:
        flat = dict(_as_tensor_dict(obj["state_dict"], src, "state_dict"))
        if not isinstance(obj["latent_avg"], torch.Tensor):
            raise ModelCorrupt(f"{src}: 'latent_avg' is not a tensor.", _REDOWNLOAD_HINT)
        flat["latent_avg"] = obj["latent_avg"]
        opts = obj.get("opts") or {}
        opts = dict(opts) if isinstance(opts, Mapping) else {}
        # training-only entries (optimizer, discriminator, global_step) are dropped on purpose
        return flat, {LAYOUT_KEY: LAYOUT_E4E, "opts": json.dumps(opts, default=str, sort_keys=True)}
    if "w_proj" in obj and "wplus_adapter" in obj:
        flat = {f"w_proj.{k}": v for k, v in _as_tensor_dict(obj["w_proj"], src, "w_proj").items()}
        flat.update({f"wplus_adapter.{k}": v for k, v in _as_tensor_dict(obj["wplus_adapter"], src, "wplus_adapter").items()})
        return flat, {LAYOUT_KEY: LAYOUT_ADAPTER}
    # a wrapped state dict ({'state_dict': ..., 'global_step': ...}, Lightning style) keeps only the weights
    inner = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    return _as_tensor_dict(inner, src, "state_dict"), {LAYOUT_KEY: LAYOUT_STATE_DICT}


def convert_to_safetensors(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Convert an official pickled checkpoint to safetensors so later loads need no pickle.

    Handles the e4e layout (flattened to `encoder.*`, `decoder.*`, `latent_avg`, opts as JSON metadata),
    the W+ adapter layout (`w_proj.*`, `wplus_adapter.*`) and plain state dicts (ParseNet). Shared or
    non-contiguous tensors are written as independent copies. The write is atomic.

    Args:
        src: the pickled file (read with `weights_only=True`).
        dst: the `.safetensors` file to write (replaced if present).

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
        flat, meta = _flatten_for_safetensors(obj, src_p)
    atomic_write_with(dst_p, lambda fh: _write_safetensors(fh, flat, meta))
    return dst_p
