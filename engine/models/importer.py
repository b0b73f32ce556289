"""Bring model files into the models folder from a folder, a USB drive or a .zip (no network).

Files are recognised by their official names (and the aliases of the manifest), as diffusers folders
(SD1.5 with model_index.json, the VAE by its folder name), or — when renamed — by sha256: the manifest's
published hash, or a hash recorded earlier (in the target's or the source's .wplus-hashes.json). Each
file is verified while it is copied; pickled checkpoints are then converted once to safetensors
(weights_only load): the manifest's files beside themselves (`engine.models.convert`), SD1.5 `.ckpt`
files and diffusers folders of `.bin` weights into `.converted/` (`engine.models.converted`), as their
first load would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from engine.api import ModelStatus, Progress
from engine.config import EngineConfig
from engine.errors import EngineError, ModelCorrupt, UnsafeCheckpoint
from engine.models.convert import convert_to_safetensors
from engine.models.converted import FOLDER_COMPONENTS, converted_copy, needs_conversion
from engine.models.folder import QUARANTINE_DIR, quarantine
from engine.models.manifest import Manifest, ModelEntry, load_manifest
from engine.models.safe_load import PICKLE_SUFFIXES
from engine.models.verify import HASHES_FILE, HashCache, check_models, sha256_stream, structure_problem

log = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None] | None
_SKIP_DIRS = {QUARANTINE_DIR, ".git", "__pycache__", "$RECYCLE.BIN", "System Volume Information"}


@dataclass(frozen=True)
class ImportedFile:
    """One file placed in the models folder."""

    entry_id: str
    source: str  # the source path, or "archive.zip:member"
    dest: Path
    recognised_by: str  # "name", "folder" or "sha256"
    action: str  # "copied", "hard-linked", "symlinked", "extracted", "already present"
    sha256: str


@dataclass(frozen=True)
class ImportReport:
    """What an import found, placed, converted and refused, and what is still missing."""

    imported: tuple[ImportedFile, ...] = ()
    converted: tuple[tuple[str, Path], ...] = ()  # (entry id, safetensors written)
    rejected: tuple[tuple[str, str], ...] = ()  # (source, reason)
    missing: tuple[str, ...] = ()  # required entry ids still missing
    missing_optional: tuple[str, ...] = ()

    @property
    def found_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.entry_id for f in self.imported))

    def lines(self) -> list[str]:
        """A human summary, one line per fact."""
        out = [f"{f.action}: {f.entry_id} ← {f.source} (recognised by {f.recognised_by})" for f in self.imported]
        out += [f"converted: {i} → {p.name}" for i, p in self.converted]
        out += [f"refused: {src}: {why}" for src, why in self.rejected]
        if self.missing:
            out.append("still missing (required): " + ", ".join(self.missing))
        if self.missing_optional:
            out.append("not present (optional): " + ", ".join(self.missing_optional))
        if not self.imported and not self.rejected:
            out.append("no model files recognised in the source")
        return out


# -- source items --------------------------------------------------------------------------------------


@dataclass
class _Item:
    rel: PurePosixPath  # relative to the source root
    size: int
    label: str
    open: Callable[[], IO[bytes]]
    fs_path: Path | None = None  # None inside a zip
    used: bool = False

    @property
    def name(self) -> str:
        return self.rel.name


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: path.open("rb")


def _zip_opener(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
    return lambda: zf.open(info)


class _Source:
    def __init__(self, root: Path, models_dir: Path) -> None:
        self.root = root
        self.zip: zipfile.ZipFile | None = None
        self.items: list[_Item] = []
        self.records: dict[str, str] = {}  # rel path in a models folder → recorded sha256
        if root.is_file():
            if not zipfile.is_zipfile(root):
                raise EngineError(f"{root} is neither a folder nor a .zip archive.", "Choose the folder or .zip that holds the model files.")
            self._scan_zip(root)
        elif root.is_dir():
            self._scan_dir(root, models_dir)
        else:
            raise EngineError(f"{root} does not exist.", "Check the path of the folder, drive or .zip.")

    def _scan_dir(self, root: Path, models_dir: Path) -> None:
        inside = models_dir.resolve()
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            dirnames[:] = sorted(
                n for n in dirnames if n not in _SKIP_DIRS and (d / n).resolve() != inside
            )
            for fn in sorted(filenames):
                p = d / fn
                if fn.endswith(".part") or p.is_symlink() or not p.is_file():
                    continue
                rel = PurePosixPath(p.relative_to(root).as_posix())
                if fn == HASHES_FILE:
                    self._read_records(p.read_bytes(), rel.parent)
                    continue
                self.items.append(_Item(rel, p.stat().st_size, str(p), _opener(p), p))

    def _scan_zip(self, root: Path) -> None:
        try:
            self.zip = zipfile.ZipFile(root)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise EngineError(f"{root} is a damaged .zip archive ({exc}).", "Copy the archive again.") from exc
        for info in infos:
            if info.is_dir():
                continue
            rel = PurePosixPath(info.filename)
            if rel.is_absolute() or ".." in rel.parts or rel.name.endswith(".part"):
                continue  # never trust member paths: we only use names we recognise
            if any(part in _SKIP_DIRS for part in rel.parts):
                continue
            if rel.name == HASHES_FILE:
                self._read_records(self.zip.read(info), rel.parent)
                continue
            self.items.append(_Item(rel, info.file_size, f"{root.name}:{info.filename}", _zip_opener(self.zip, info)))

    def _read_records(self, raw: bytes, base: PurePosixPath) -> None:
        try:
            files = json.loads(raw).get("files", {})
        except (ValueError, AttributeError):
            return
        for key, rec in files.items():
            if isinstance(rec, dict) and rec.get("recorded_sha256") and not PurePosixPath(key).is_absolute():
                self.records[key] = rec["recorded_sha256"]

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


# -- planning -------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    entry: ModelEntry
    item: _Item
    dest: Path
    how: str
    expect_sha: str = ""  # published hash the copy must match
    known_sha: str = ""  # hash the item was recognised by (already computed)


@dataclass
class _Planner:
    manifest: Manifest
    models_dir: Path
    source: _Source
    cache: HashCache
    plans: list[_Plan] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def by_name(self) -> None:
        items = self.source.items
        for entry in self.manifest:
            if entry.kind in ("sd15", "diffusers"):
                self._folders(entry, items)
        for entry in self.manifest:
            if entry.kind == "file":
                for item in items:
                    if item.used or item.name not in entry.official_names:
                        continue
                    is_conv = bool(entry.converted) and item.name == Path(entry.converted).name
                    self._add(entry, item, self.models_dir / (entry.converted if is_conv else entry.path), "name",
                              "" if is_conv else entry.sha256)
            elif entry.kind == "sd15":
                for item in items:
                    in_sd15_dir = len(item.rel.parts) >= 2 and item.rel.parts[-2] == Path(entry.path).name
                    single = item.name.lower().endswith((".safetensors", ".ckpt")) and (
                        item.name in entry.aliases or in_sd15_dir)
                    if not item.used and single:
                        sha = next((d.sha256 for d in entry.downloads if Path(d.rel_path).name == item.name), "")
                        self._add(entry, item, self.models_dir / entry.path / item.name, "name", sha)

    def _folders(self, entry: ModelEntry, items: list[_Item]) -> None:
        marker = "model_index.json" if entry.kind == "sd15" else "config.json"
        roots = sorted({i.rel.parent for i in items if i.name == marker and not i.used}, key=lambda r: len(r.parts))
        for root in roots:
            if entry.kind == "sd15":
                if not any(i.rel.parent.parent == root and i.rel.parts[-2] == "unet" for i in items):
                    continue
                target = self.models_dir / entry.path
                if root.name and root.name != Path(entry.path).name:
                    target = target / root.name
            else:
                if root.name != Path(entry.path).name:
                    continue  # a bare config.json is too common to guess from; the folder name must match
                target = self.models_dir / entry.path
            for item in items:
                if item.used or not _is_under(item.rel, root):
                    continue
                expect = next(
                    (d.sha256 for d in entry.downloads if Path(d.rel_path).name == item.name and item.rel.parent == root), ""
                )
                self._add(entry, item, target.joinpath(*item.rel.relative_to(root).parts), "folder", expect)

    def by_hash(self, token: Any, progress: ProgressFn) -> None:
        known = self._known_hashes()
        if not known:
            return
        for item in self.source.items:
            if item.used or item.size == 0:
                continue
            fits = [(e, rel) for e, rel in known.values() if _plausible(e, item.size)]
            if not fits:
                continue
            digest = _hash_item(item, token, progress)
            hit = known.get(digest)
            if hit is None:
                continue
            entry, rel = hit
            self._add(entry, item, self.models_dir / rel, "sha256", digest if digest == entry.sha256 else "", digest)

    def _known_hashes(self) -> dict[str, tuple[ModelEntry, str]]:
        """sha256 → (entry, destination relative path), for entries that no planned file provides yet."""
        planned = {p.entry.id for p in self.plans}
        out: dict[str, tuple[ModelEntry, str]] = {}
        for entry in self.manifest:
            if entry.id in planned or entry.kind == "bundled":
                continue
            if entry.kind == "file" and any(
                (self.models_dir / rel).is_file() for rel in (entry.path, entry.converted) if rel
            ):
                continue  # already in the models folder: not worth reading large files to find it
            if entry.sha256:
                out[entry.sha256] = (entry, entry.path)
            for d in entry.downloads:
                if d.sha256:
                    out[d.sha256] = (entry, d.rel_path)
            own = [entry.path] + ([entry.converted] if entry.converted else [])
            records = dict(self.source.records)
            for rel in own:
                rec = self.cache.recorded(self.models_dir / rel)
                if rec:
                    records[rel] = rec[0]
            for rel, sha in records.items():
                if rel in own or (entry.kind != "file" and _is_under(PurePosixPath(rel), PurePosixPath(entry.path))):
                    out.setdefault(sha, (entry, rel))
        return out

    def _add(self, entry: ModelEntry, item: _Item, dest: Path, how: str, expect_sha: str, known_sha: str = "") -> None:
        item.used = True
        if item.size == 0:
            self.rejected.append((item.label, "the file is empty (an interrupted copy?)"))
            return
        # Sizes in the manifest describe the official file (the pickle, or an SD1.5 checkpoint), not
        # converted copies or the small files of a diffusers folder.
        official = dest == self.models_dir / entry.path or (entry.kind == "sd15" and how != "folder")
        if official and entry.kind == "file" and entry.size and item.size != entry.size:
            self.rejected.append((item.label, f"{item.size:,} bytes, but {entry.id} is {entry.size:,} bytes (incomplete copy?)"))
            return
        if official and entry.min_size and item.size < entry.min_size:
            self.rejected.append((item.label, f"only {item.size:,} bytes: too small to be {entry.id} (incomplete copy?)"))
            return
        self.plans.append(_Plan(entry, item, dest, how, expect_sha, known_sha))


def _is_under(rel: PurePosixPath, root: PurePosixPath) -> bool:
    return root == PurePosixPath(".") or root == PurePosixPath("") or rel.parts[: len(root.parts)] == root.parts


def _plausible(entry: ModelEntry, size: int) -> bool:
    if entry.kind == "file" and entry.size:
        return size == entry.size
    return size >= entry.min_size


def _hash_item(item: _Item, token: Any, progress: ProgressFn) -> str:
    with item.open() as fh:
        return sha256_stream(fh, item.size, f"identifying {item.name}", progress=progress, token=token)


# -- placing ------------------------------------------------------------------------------------------


def _copy_hashing(src: IO[bytes], dst: IO[bytes], size: int, label: str, token: Any, progress: ProgressFn) -> str:
    return sha256_stream(src, size, label, progress=progress, token=token, copy_to=dst)


def _set_aside(path: Path, models_dir: Path) -> Path:
    return quarantine(path, models_dir, "replaced by `wplus models import`")


def _place(plan: _Plan, models_dir: Path, cache: HashCache, link: bool, token: Any, progress: ProgressFn) -> ImportedFile:
    item, dest = plan.item, plan.dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and dest.stat().st_size == item.size:
        src_sha = plan.known_sha or _hash_item(item, token, progress)
        if cache.sha256(dest, token=token) == src_sha:
            _check_expected(plan, src_sha)
            if cache.recorded(dest) is None:
                cache.record(dest, src_sha, "import")
            return ImportedFile(plan.entry.id, item.label, dest, plan.how, "already present", src_sha)
    if link and item.fs_path is not None:
        digest = plan.known_sha or _hash_item(item, token, progress)
        _check_expected(plan, digest)
        problem = structure_problem(item.fs_path)
        if problem:
            raise ModelCorrupt(f"{item.label}: {problem}")
        action = _link(item.fs_path, dest, models_dir)
    else:
        digest = _copy_verified(plan, models_dir, token, progress)
        action = "copied" if item.fs_path is not None else "extracted"
    cache.record(dest, digest, "import")
    return ImportedFile(plan.entry.id, item.label, dest, plan.how, action, digest)


def _copy_verified(plan: _Plan, models_dir: Path, token: Any, progress: ProgressFn) -> str:
    """Copy to a hidden temporary file beside the target, verify, then move it into place."""
    item, dest = plan.item, plan.dest
    tmp = dest.with_name(f".{dest.name}.import-part")
    try:
        with item.open() as src, open(tmp, "wb") as out:
            digest = _copy_hashing(src, out, item.size, f"importing {item.name}", token, progress)
            out.flush()
            os.fsync(out.fileno())
        _check_expected(plan, digest)
        problem = structure_problem(tmp, dest.suffix)
        if problem:
            raise ModelCorrupt(f"{item.label}: {problem}")
        if dest.exists() or dest.is_symlink():
            _set_aside(dest, models_dir)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return digest


def _check_expected(plan: _Plan, digest: str) -> None:
    if plan.expect_sha and digest != plan.expect_sha:
        raise ModelCorrupt(
            f"{plan.item.label}: sha256 {digest[:16]}… does not match the published {plan.expect_sha[:16]}… of {plan.entry.id}"
        )


def _link(src: Path, dest: Path, models_dir: Path) -> str:
    tmp = dest.with_name(f".{dest.name}.link-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
        action = "hard-linked"
    except OSError:
        try:
            os.symlink(src.resolve(), tmp)
            action = "symlinked"
        except OSError:
            shutil.copy2(src, tmp)
            action = "copied"
    if dest.exists() or dest.is_symlink():
        _set_aside(dest, models_dir)
    os.replace(tmp, dest)
    return action


# -- entry point ------------------------------------------------------------------------------------------


def import_models(
    source: str | os.PathLike[str],
    models_dir: str | os.PathLike[str],
    *,
    link: bool = False,
    progress: ProgressFn = None,
    token: Any = None,
    manifest: Manifest | None = None,
    convert: bool = True,
    cache_dir: Path | None = None,
) -> ImportReport:
    """Copy (or link) the model files found in `source` into `models_dir`, verify and convert them.

    Args:
        source: a folder (a USB drive, another computer's models folder, a download folder) or a .zip.
        models_dir: the models folder to fill (created if needed).
        link: hard-link (same drive) or else symlink instead of copying; ignored for a .zip.
        progress: receives Progress(stage, bytes, total) while identifying, copying and converting.
        token: CancelToken checked between chunks; a cancelled copy leaves no partial file.
        manifest: default resources/models.toml.
        convert: convert pickled checkpoints (.pt/.pth/.bin) to safetensors after copying.

    Returns:
        ImportReport: imported files, conversions, refused files with the reason, missing entries.

    Raises:
        EngineError: the source is neither a folder nor a zip, or cannot be read.
        Cancelled: the token was set (files already placed stay).
    """
    man = manifest or load_manifest()
    dest_root = Path(models_dir).absolute()
    dest_root.mkdir(parents=True, exist_ok=True)
    cache = HashCache(dest_root, cache_dir)
    src = _Source(Path(source).absolute(), dest_root)
    imported: list[ImportedFile] = []
    converted: list[tuple[str, Path]] = []
    try:
        planner = _Planner(man, dest_root, src, cache)
        planner.by_name()
        planner.by_hash(token, progress)
        rejected = list(planner.rejected)
        for plan in planner.plans:
            try:
                imported.append(_place(plan, dest_root, cache, link, token, progress))
            except ModelCorrupt as exc:
                rejected.append((plan.item.label, exc.user_message))
            except OSError as exc:
                rejected.append((plan.item.label, f"could not be copied: {exc.strerror or exc}"))
        cache.save()
        if convert:
            converted, failures = _convert_imported(man, dest_root, cache, imported, progress, cache_dir)
            rejected += failures
        cache.save()
    finally:
        src.close()
        cache.save()
    states = check_models(EngineConfig(models_dir=dest_root, cache_dir=cache_dir), manifest=man, verify=False)
    missing = tuple(s.id for s in states if s.required and s.status == ModelStatus.MISSING)
    missing_opt = tuple(s.id for s in states if not s.required and s.status == ModelStatus.MISSING)
    return ImportReport(tuple(imported), tuple(converted), tuple(rejected), missing, missing_opt)


def _convert_imported(
    man: Manifest, models_dir: Path, cache: HashCache, imported: list[ImportedFile], progress: ProgressFn,
    cache_dir: Path | None = None,
) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    done: list[tuple[str, Path]] = []
    failed: list[tuple[str, str]] = []
    unsafe: list[ImportedFile] = []
    entries = {e.id: e for e in man}
    placed = {f.dest for f in imported}
    todo = [
        (entries[f.entry_id], f) for f in imported
        if entries[f.entry_id].kind == "file" and entries[f.entry_id].converted
        and f.dest == models_dir / entries[f.entry_id].path
    ]
    for n, (entry, f) in enumerate(todo):
        dst = models_dir / entry.converted
        if dst in placed:
            continue  # the safetensors copy came with the import
        if progress is not None:
            progress(Progress(f"converting {f.dest.name} to safetensors", n, len(todo)))
        try:
            convert_to_safetensors(f.dest, dst)
        except UnsafeCheckpoint as exc:
            # It can never be loaded (weights_only refuses it) and would run code under a careless
            # loader: keep it out of the models folder.
            q = quarantine(f.dest, models_dir, exc.user_message)
            cache.forget(f.dest)
            failed.append((f.source, f"refused for safety and moved to {q}: {exc.user_message}"))
            unsafe.append(f)
            continue
        except EngineError as exc:
            failed.append((f.source, f"not converted to safetensors: {exc.user_message}"))
            continue
        cache.record(dst, cache.sha256(dst), "convert")
        done.append((entry.id, dst))
    for f in unsafe:
        imported.remove(f)
    sd15_done, sd15_failed = _convert_sd15(man, models_dir, cache_dir, imported, progress)
    return done + sd15_done, failed + sd15_failed


def _convert_sd15(
    man: Manifest, models_dir: Path, cache_dir: Path | None, imported: list[ImportedFile], progress: ProgressFn
) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """Convert imported SD1.5 `.ckpt` files and diffusers folders with pickled weights into `.converted/`
    now (as the first load would), so no load ever unpickles them. An unsafe pickle is quarantined."""
    done: list[tuple[str, Path]] = []
    failed: list[tuple[str, str]] = []
    entries = {e.id: e for e in man if e.kind in ("sd15", "diffusers")}
    sources: dict[Path, ImportedFile] = {}
    for f in imported:
        entry = entries.get(f.entry_id)
        if entry is None or f.dest.suffix.lower() not in PICKLE_SUFFIXES:
            continue
        home = models_dir / entry.path
        if entry.kind == "sd15" and f.dest.parent == home:
            sources.setdefault(f.dest, f)  # a single-file checkpoint
        elif entry.kind == "sd15":
            root = f.dest.parent.parent if f.dest.parent.name in FOLDER_COMPONENTS else f.dest.parent
            sources.setdefault(root, f)  # a diffusers folder: converted as a whole
        else:
            sources.setdefault(home, f)
    todo = [(src, f) for src, f in sources.items() if needs_conversion(src)]
    for n, (src, f) in enumerate(todo):
        if progress is not None:
            progress(Progress(f"converting {src.name} to safetensors", n, len(todo)))
        try:
            out = converted_copy(src, models_dir, cache_dir, tensors_only=src.is_file())
        except UnsafeCheckpoint as exc:
            failed.append((f.source, f"refused for safety: {exc.user_message}"))
            if src.is_file():
                q = quarantine(src, models_dir, exc.user_message)
                imported.remove(f)
                failed[-1] = (f.source, f"refused for safety and moved to {q}: {exc.user_message}")
            continue
        except EngineError as exc:
            failed.append((f.source, f"not converted to safetensors: {exc.user_message}"))
            continue
        done.append((f.entry_id, out))
    return done, failed
