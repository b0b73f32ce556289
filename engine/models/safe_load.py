"""Reading weight files without running code from them, and checking their layout.

Safetensors are read directly; pickled torch files only with `torch.load(weights_only=True,
map_location="cpu")`, so a file carrying code is refused before anything in it runs. The one
safetensors header parser of the project is here (`read_safetensors_header`): structure checks, family
detection and truncation reports all use it. Layout checks report the file, the expected layout and the
first key that does not fit, so a user can tell a truncated download from a wrong file.

Network-specific layouts (e4e, the W+ adapter, ParseNet) live next to their networks in
`engine.networks`; they build on `load_state`, `check_layout` and `load_safetensors` from here.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelCorrupt, ModelMissing, UnsafeCheckpoint

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
LAYOUT_KEY = "wplus_layout"  # safetensors metadata entry naming the layout of a converted file
LAYOUT_E4E = "e4e"
LAYOUT_ADAPTER = "wplus_adapter"
LAYOUT_STATE_DICT = "state_dict"
REDOWNLOAD_HINT = "The file is truncated, damaged or not the expected model: download it again or re-import it."
_MAX_HEADER = 100 << 20


# -- safetensors header ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsHeader:
    """What the header of a safetensors file says, read without touching tensor data.

    Attributes:
        tensors: key → (dtype name, shape).
        metadata: the `__metadata__` strings.
        described_size: the file size the header describes (8 + header length + data length).
        file_size: the actual file size.
    """

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]
    described_size: int
    file_size: int


def safetensors_header_problem(path: str | os.PathLike[str]) -> SafetensorsHeader | str:
    """The parsed header, or a short reason ("its header is damaged", "it is truncated: …") it is unusable.

    Raises:
        ModelMissing: no such file, or no permission to read it.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelMissing(f"Model file not found: {p}.", "Check the path or the models folder.")
    size = p.stat().st_size
    damaged = "is not a safetensors file (its header is damaged)"
    try:
        with p.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return "is too short to be a safetensors file (empty or truncated)"
            (n,) = struct.unpack("<Q", raw)
            if n <= 1 or n > min(size - 8, _MAX_HEADER):
                return damaged
            header = json.loads(fh.read(n))
    except (UnicodeDecodeError, ValueError):
        return damaged
    except PermissionError as exc:
        raise ModelMissing(f"No permission to read {p}.", "Fix the file's permissions.") from exc
    if not isinstance(header, dict):
        return damaged
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (_a, b) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            end = max(end, int(b))
        except (KeyError, TypeError, ValueError, IndexError):
            return f"has a damaged safetensors header (entry '{key}')"
        tensors[key] = (str(dtype), shape)
    meta = header.get("__metadata__") or {}
    described = 8 + n + end
    if described > size:
        return f"is truncated: it has {size:,} bytes, its header describes {described:,} (incomplete download?)"
    return SafetensorsHeader(tensors, {str(k): str(v) for k, v in dict(meta).items()}, described, size)


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse the header of a safetensors file (no tensor data is read).

    Raises:
        ModelMissing: no such file, or no permission to read it.
        ModelCorrupt: not a safetensors file, a damaged header, or truncated (the data does not cover
            the header's offsets).
    """
    found = safetensors_header_problem(path)
    if isinstance(found, str):
        raise ModelCorrupt(f"{path} {found}.", REDOWNLOAD_HINT)
    return found


# -- reading ----------------------------------------------------------------------------------------


def check_exists(path: Path) -> None:
    """Raise ModelMissing / ModelCorrupt unless `path` is an existing file."""
    if not path.exists():
        raise ModelMissing(f"Model file not found: {path}.", "Check the models folder or run `wplus models fetch`.")
    if not path.is_file():
        raise ModelCorrupt(f"{path} is not a file.", "Point to the model file itself, not a folder.")


def load_safetensors(
    path: Path, keep: Callable[[str], bool] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str], tuple[str, ...]]:
    """(tensors, metadata, all keys) of a safetensors file on the CPU.

    Args:
        keep: read only the tensors whose key passes (safetensors reads each tensor on demand).

    Raises:
        ModelMissing: no permission. ModelCorrupt: not a readable safetensors file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            keys = tuple(fh.keys())
            tensors = {k: fh.get_tensor(k) for k in keys if keep is None or keep(k)}
    except PermissionError as exc:
        raise ModelMissing(f"No permission to read {path}.", "Fix the file's permissions.") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError and sometimes OSError/ValueError
        raise ModelCorrupt(f"{path} is not a readable safetensors file ({exc}).", REDOWNLOAD_HINT) from exc
    return tensors, metadata, keys


def load_pickle(path: Path, *, mmap: bool = False) -> Any:
    """`torch.load(weights_only=True, map_location="cpu")` with clear refusals.

    Args:
        mmap: memory-map the tensors of a zip-format checkpoint (torch ≥ 1.6 `torch.save`), so only the
            tensors that are used are read from disk; legacy pickles (and file systems without mmap)
            are read whole.

    Raises:
        UnsafeCheckpoint: the pickle names a callable or class (refused before anything ran).
        ModelCorrupt: truncated or damaged. ModelMissing: no permission.
    """
    import pickle
    import zipfile

    import torch

    if mmap and zipfile.is_zipfile(path):
        try:
            return torch.load(str(path), weights_only=True, map_location="cpu", mmap=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, ValueError):
            pass  # the same refusal or error, with the full message, from the plain load below
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
            REDOWNLOAD_HINT,
        ) from None
    except PermissionError as exc:
        raise ModelMissing(f"No permission to read {path}.", "Fix the file's permissions.") from exc
    except (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, AttributeError) as exc:
        # truncated zip (OSError/RuntimeError), truncated legacy pickle (EOFError), garbage
        raise ModelCorrupt(f"{path} is truncated or damaged and cannot be loaded ({type(exc).__name__}).",
                           REDOWNLOAD_HINT) from exc


def load_state_with_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Like `load_state`, also returning the safetensors metadata (empty for pickles)."""
    p = Path(path)
    check_exists(p)
    suffix = p.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        tensors, metadata, _keys = load_safetensors(p)
        return tensors, metadata
    if suffix in PICKLE_SUFFIXES:
        obj = load_pickle(p)
        if not isinstance(obj, dict):
            raise ModelCorrupt(f"{p} holds a {type(obj).__name__}, not a dictionary of weights.", REDOWNLOAD_HINT)
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
    check_exists(p)
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        tensors, _meta, _keys = load_safetensors(p)
        if len(tensors) != 1:
            raise ModelCorrupt(f"{p} holds {len(tensors)} tensors, expected exactly one.")
        return next(iter(tensors.values()))
    obj = load_pickle(p)
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    raise ModelCorrupt(f"{p} holds a {type(obj).__name__}, not a tensor.")


# -- layout checks --------------------------------------------------------------------------------


def shape_of(v: Any) -> tuple[int, ...] | None:
    """The shape of a tensor-like value as ints, or None for anything without `.shape`."""
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
                REDOWNLOAD_HINT,
            )
        got = shape_of(state[key])
        if got is None:
            raise ModelCorrupt(
                f"{file} does not have the {layout_name} layout: '{key}' is a {type(state[key]).__name__}, "
                "not a tensor.",
                REDOWNLOAD_HINT,
            )
        if got != want:
            raise ModelCorrupt(
                f"{file} does not have the {layout_name} layout: '{key}' has shape {list(got)}, "
                f"expected {list(want)}.",
                REDOWNLOAD_HINT,
            )
    for key in state:
        if key not in expected:
            raise ModelCorrupt(
                f"{file} does not have the {layout_name} layout: unexpected key '{key}'.",
                REDOWNLOAD_HINT,
            )


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix)}


def as_tensor_dict(obj: Any, file: Path, what: str) -> dict[str, torch.Tensor]:
    """`obj` as a dict of tensors, or ModelCorrupt naming the first entry that is not a tensor."""
    import torch

    if not isinstance(obj, Mapping):
        raise ModelCorrupt(f"{file}: '{what}' is a {type(obj).__name__}, expected a dictionary of tensors.",
                           REDOWNLOAD_HINT)
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ModelCorrupt(f"{file}: '{what}.{k}' is a {type(v).__name__}, not a tensor.", REDOWNLOAD_HINT)
    return dict(obj)
