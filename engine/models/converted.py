"""The `.converted/` store: safetensors copies of pickles that are not the manifest's own files.

A pickle the user named elsewhere (`--parser mine.pth`), an SD1.5 single-file `.ckpt`, a separate VAE
`.pt` and a diffusers folder whose weights are pickled (`unet/diffusion_pytorch_model.bin`,
`text_encoder/pytorch_model.bin`) are converted once, weights-only, into
`<models>/.converted/TAG/` (or the user cache dir when the models folder cannot be written). TAG hashes
the source's path, size and mtime (every file's, for a folder), so a changed source gets a new copy and
run-time loads never unpickle. Each TAG folder records its source in `source.json`, written last:
`clean_converted` uses it to find copies whose source is gone or changed, and a folder without it is an
interrupted conversion (or one made before records existed).

A converted diffusers folder mirrors what the SD1.5/VAE loaders read: the pickled weight file of each
component becomes its safetensors name, the configs, tokenizer and scheduler files are linked (hard
link, else symbolic, else copied) and nothing else is taken (no safety checker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.folder import CONVERTED_DIR, fallback_subdir, writable_subdir
from engine.models.safe_load import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX

log = logging.getLogger(__name__)

RECORD = "source.json"
TAG_LENGTH = 12
# The components of a diffusers folder that the loaders read, and their weight names in diffusers'
# order of preference (safetensors before pickles, plain before fp16 variants).
FOLDER_COMPONENTS = ("unet", "vae", "text_encoder")
FOLDER_EXTRAS = ("tokenizer", "scheduler")
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
_WEIGHT_SUFFIXES = (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, ".msgpack", ".h5", ".onnx", ".pb")
_TRANSFORMERS_FORMAT = {"format": "pt"}  # transformers refuses safetensors without it


# -- what needs converting --------------------------------------------------------------------------


def loaded_weight_file(folder: Path) -> Path | None:
    """The weight file diffusers/transformers would read in a component folder, or None.

    Plain before fp16, safetensors before pickles (as `engine.networks.sd15` chooses the variant).
    """
    if not folder.is_dir():
        return None
    for variant in ("", ".fp16"):
        for suffix in (SAFETENSORS_SUFFIX, ".bin"):
            for stem in _WEIGHT_STEMS:
                if stem == "model" and suffix == ".bin":
                    continue  # transformers' pickle is pytorch_model.bin
                if stem == "pytorch_model" and suffix == SAFETENSORS_SUFFIX:
                    continue
                p = folder / f"{stem}{variant}{suffix}"
                if p.is_file():
                    return p
    return None


def _component_dirs(folder: Path) -> list[Path]:
    """The component folders of a diffusers SD1.5 folder, or the folder itself for a component (a VAE)."""
    subs = [folder / c for c in FOLDER_COMPONENTS if (folder / c).is_dir()]
    return subs or [folder]


def pickled_weights(folder: Path) -> list[Path]:
    """The pickled weight files a diffusers folder would be loaded from (empty: nothing to convert)."""
    found = [loaded_weight_file(d) for d in _component_dirs(folder)]
    return [p for p in found if p is not None and p.suffix.lower() in PICKLE_SUFFIXES]


def needs_conversion(path: Path) -> bool:
    """Whether loading `path` (a weight file or a diffusers folder) would unpickle something."""
    if path.is_dir():
        return bool(pickled_weights(path))
    return path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES


def safetensors_name(pickle_name: str) -> str:
    """`diffusion_pytorch_model[.fp16].bin` → `…safetensors`; transformers' `pytorch_model.bin` → `model.safetensors`."""
    stem = pickle_name.rsplit(".", 1)[0]
    if stem.startswith("pytorch_model"):
        stem = "model" + stem.removeprefix("pytorch_model")
    return stem + SAFETENSORS_SUFFIX


# -- the source's identity --------------------------------------------------------------------------


def _mirrored_files(folder: Path) -> Iterator[Path]:
    """The files of a diffusers folder that a converted copy is made from (and whose change makes it stale):
    each component's loaded weight file and every non-weight file (configs, tokenizer, scheduler, the
    index). Other weights — a checkpoint beside the components, as in a cloned hub repository, fp16
    twins, other formats — are left out."""
    components = _component_dirs(folder)
    extras = [folder / x for x in FOLDER_EXTRAS if (folder / x).is_dir()]
    top = [] if components == [folder] else [folder]
    for d in top + components + extras:
        weights = loaded_weight_file(d) if d in components else None
        for f in sorted(d.iterdir()):
            if f.is_file() and (f == weights or f.suffix.lower() not in _WEIGHT_SUFFIXES):
                yield f


def source_stamp(src: Path) -> dict[str, list[int]]:
    """{relative file name: [size, mtime_ns]} of a file ("." for itself) or of a folder's mirrored files."""
    if src.is_file():
        st = src.stat()
        return {".": [st.st_size, st.st_mtime_ns]}
    out = {}
    for f in _mirrored_files(src):
        st = f.stat()
        out[f.relative_to(src).as_posix()] = [st.st_size, st.st_mtime_ns]
    return out


def source_tag(src: Path) -> str:
    """The TAG of `src`'s copy: its resolved path with its size and mtime (each mirrored file's, for a folder)."""
    resolved = src.resolve()
    if src.is_file():
        st = src.stat()
        key = f"{resolved}|{st.st_size}|{st.st_mtime_ns}"
    else:
        key = f"{resolved}|" + json.dumps(source_stamp(src), sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:TAG_LENGTH]


# -- converting -------------------------------------------------------------------------------------


def store_root(models_dir: Path, cache_dir: Path | None = None) -> Path:
    """Where new copies go: `<models>/.converted`, or the user cache dir when that cannot be written."""
    return writable_subdir(models_dir, CONVERTED_DIR, cache_dir)


Check = Callable[[Mapping[str, Any]], None]


def converted_copy(src: Path, models_dir: Path, cache_dir: Path | None = None, *, check: Check | None = None,
                   tensors_only: bool = False) -> Path:
    """The safetensors copy of a pickled weight file or of a diffusers folder with pickled weights,
    made now (weights-only) unless an up-to-date one exists.

    Args:
        src: a pickled file (`.pt/.pth/.bin/.ckpt`) or a diffusers folder (SD1.5 or a VAE).
        check: called with a file's tensors before anything is written (refuse another model family).
        tensors_only: keep only the tensors of a single file's state dict (SD1.5 `.ckpt` files carry
            other entries, which the loaders ignore too).

    Returns:
        The `.safetensors` file, or the converted folder (its name is the source folder's).

    Raises:
        ModelMissing, UnsafeCheckpoint, ModelCorrupt: the pickle cannot be converted (nothing is kept).
        WrongModelFamily: from `check`. StorageError: the copy could not be written.
    """
    src = Path(src)
    tag_dir = store_root(models_dir, cache_dir) / source_tag(src)
    dst = tag_dir / (src.name if src.is_dir() else f"{src.stem}{SAFETENSORS_SUFFIX}")
    record = tag_dir / RECORD
    if record.is_file() and dst.exists():
        return dst
    if src.is_file() and dst.is_file():  # made before records existed: adopt it (the TAG matches the source)
        _write_record(record, src)
        return dst
    if tag_dir.exists():
        shutil.rmtree(tag_dir)  # an interrupted folder conversion
    try:
        if src.is_dir():
            _convert_folder(src, dst)
        else:
            _convert_file(src, dst, check=check, tensors_only=tensors_only)
        _write_record(record, src)
    except BaseException:
        shutil.rmtree(tag_dir, ignore_errors=True)
        raise
    log.info("converted %s to %s", src, dst)
    return dst


def _convert_file(src: Path, dst: Path, *, check: Check | None, tensors_only: bool,
                  metadata: Mapping[str, str] | None = None) -> None:
    from engine.models.convert import convert_to_safetensors

    dst.parent.mkdir(parents=True, exist_ok=True)
    convert_to_safetensors(src, dst, check=check, tensors_only=tensors_only, metadata=metadata)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        try:
            os.symlink(src.resolve(), dst)
        except OSError:
            shutil.copy2(src, dst)


def _convert_folder(src: Path, dst: Path) -> None:
    pickles = set(pickled_weights(src))
    for f in _mirrored_files(src):
        rel = f.relative_to(src)
        if f in pickles:
            _convert_file(f, dst / rel.parent / safetensors_name(f.name), check=None, tensors_only=False,
                          metadata=_TRANSFORMERS_FORMAT)
        else:
            _link_or_copy(f, dst / rel)


def _write_record(record: Path, src: Path) -> None:
    from engine.fileio import atomic_write_bytes

    data = {"source": str(src.resolve()), "kind": "folder" if src.is_dir() else "file",
            "stamp": source_stamp(src), "made": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_bytes(record, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


# -- cleaning ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCopy:
    """One TAG folder of the store and what `clean_converted` thinks of it.

    Attributes:
        path: the TAG folder.
        source: the file or folder it was made from ("" when unknown).
        state: "current", "source gone", "source changed" or "unknown source".
        size: bytes its files take that only it holds (hard links to user files are not counted).
    """

    path: Path
    source: str
    state: str
    size: int


def store_roots(models_dir: Path, cache_dir: Path | None = None) -> list[Path]:
    """Every existing store of this models folder (its `.converted/` and the user-cache fallback)."""
    roots = [Path(models_dir) / CONVERTED_DIR, fallback_subdir(models_dir, CONVERTED_DIR, cache_dir)]
    return [r for r in dict.fromkeys(roots) if r.is_dir()]


def _own_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):  # os.walk does not follow symbolic links
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if not os.path.islink(os.path.join(dirpath, name)) and st.st_nlink == 1:
                    total += st.st_size
    return total


def _state(tag_dir: Path) -> tuple[str, str]:
    try:
        data = json.loads((tag_dir / RECORD).read_text("utf-8"))
        source, stamp = str(data["source"]), data["stamp"]
    except (OSError, ValueError, KeyError, TypeError):
        return "", "unknown source"
    src = Path(source)
    if not src.exists():
        return source, "source gone"
    try:
        now = source_stamp(src)
    except OSError:
        return source, "source changed"
    return source, "current" if now == stamp else "source changed"


def stored_copies(models_dir: Path, cache_dir: Path | None = None) -> list[StoredCopy]:
    """Every TAG folder in the stores, with its source and state. Anything else in them is ignored."""
    out = []
    for root in store_roots(models_dir, cache_dir):
        for d in sorted(root.iterdir()):
            if d.is_symlink() or not d.is_dir() or len(d.name) != TAG_LENGTH:
                continue
            if any(c not in "0123456789abcdef" for c in d.name):
                continue
            source, state = _state(d)
            out.append(StoredCopy(d, source, state, _own_bytes(d)))
    return out


def clean_converted(models_dir: Path, cache_dir: Path | None = None, *, everything: bool = False,
                    dry_run: bool = False) -> list[StoredCopy]:
    """Remove converted copies that no source needs any more (all of them with `everything`).

    Only TAG folders inside the stores are removed (never a symbolic link, never a file outside them);
    a hard link inside a copy is unlinked, so the user's own file stays. Copies are made again on demand.

    Returns:
        The copies removed (or, with `dry_run`, that would be).
    """
    gone = [c for c in stored_copies(models_dir, cache_dir) if everything or c.state != "current"]
    if not dry_run:
        for c in gone:
            shutil.rmtree(c.path)
    return gone
