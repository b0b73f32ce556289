"""The identity library: captured and loaded identities persisted on disk.

Layout of one identity: `<root>/<id>/wplus.npy` (float32 1×18×512), `face.png` (aligned face),
`thumb.png` (128 px) and `meta.json` (name, source, created, info). Every file is written atomically.
Deleting moves the folder to `<root>/.trash/` so it can be undone until the app closes.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from desktop.viewmodel.events import Event
from desktop.viewmodel.pictures import encode_png, thumbnail
from engine.api import Identity
from engine.edits.directions import interpolate
from engine.errors import StorageError
from engine.fileio import atomic_write_bytes
from engine.images import load_image

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class IdentityEntry:
    identity: Identity
    thumb: np.ndarray | None
    created: float
    folder: Path | None  # None: not saved (a mix preview or a restored W+)


def new_identity_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def mix_identities(a: Identity, b: Identity, t: float, name: str = "") -> Identity:
    """Linear mix of two W+ codes: t=0 gives `a`, t=1 gives `b` (faces are not mixed).

    The mix slider stays between the two people (t is clamped to [0, 1]); the W+ arithmetic is the
    engine's one mix, `engine.edits.directions.interpolate` (float64, as the official edits).
    """
    t = float(min(1.0, max(0.0, t)))
    wplus = interpolate(a.wplus, b.wplus, t)
    face = a.aligned_face if t < 0.5 else b.aligned_face
    return Identity(id=new_identity_id(), name=name or f"{a.name} × {b.name} ({round(t * 100)}%)",
                    wplus=wplus, aligned_face=face, source=f"mix:{a.id}:{b.id}:{t:.3f}",
                    info={"mix": [a.id, b.id, t]})


class IdentityLibrary:
    """Identities on disk, in creation order; signals report every change."""

    def __init__(self, root: Path) -> None:
        self.changed = Event()
        self.undo_available = Event()  # (bool)
        self.root = Path(root)
        self._entries: list[IdentityEntry] = []
        self._deleted: list[tuple[int, IdentityEntry, Path | None]] = []

    # -- reading --------------------------------------------------------------------------------
    def load(self) -> list[str]:
        """Read every identity folder; returns the problems found (broken folders are skipped)."""
        problems: list[str] = []
        self._entries = []
        if self.root.is_dir():
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                try:
                    self._entries.append(self._read(folder))
                except Exception as exc:
                    log.warning("skipping identity %s: %s", folder, exc)
                    problems.append(f"{folder.name}: {exc}")
        self._entries.sort(key=lambda e: e.created)
        self.changed.emit()
        return problems

    @staticmethod
    def _read(folder: Path) -> IdentityEntry:
        meta = json.loads((folder / "meta.json").read_text("utf-8"))
        wplus = np.load(folder / "wplus.npy", allow_pickle=False)
        face = load_image(folder / "face.png") if (folder / "face.png").exists() else None
        thumb = load_image(folder / "thumb.png") if (folder / "thumb.png").exists() else None
        ident = Identity(id=folder.name, name=str(meta.get("name", folder.name)), wplus=wplus,
                         aligned_face=face, source=str(meta.get("source", "")), info=meta.get("info", {}))
        return IdentityEntry(ident, thumb, float(meta.get("created", 0.0)), folder)

    def entries(self) -> list[IdentityEntry]:
        return list(self._entries)

    def get(self, identity_id: str) -> IdentityEntry | None:
        return next((e for e in self._entries if e.identity.id == identity_id), None)

    def find_wplus(self, wplus: np.ndarray) -> IdentityEntry | None:
        """The saved identity with exactly this W+ (restoring a PNG reselects its identity)."""
        w = np.asarray(wplus, np.float32).reshape(1, 18, 512)
        return next((e for e in self._entries if np.array_equal(e.identity.wplus, w)), None)

    # -- changes --------------------------------------------------------------------------------
    def add(self, identity: Identity, *, persist: bool = True) -> IdentityEntry:
        """Add (and by default save) an identity; its id becomes the folder name."""
        # replace() keeps every other field (e.g. the restored face shown after capture)
        ident = identity if identity.id else replace(identity, id=new_identity_id())
        if not ident.name:
            ident = replace(ident, name=f"Person {len(self._entries) + 1}")
        face = ident.aligned_face
        thumb = thumbnail(face, 128) if face is not None else None
        entry = IdentityEntry(ident, thumb, time.time(), None)
        if persist:
            entry = IdentityEntry(ident, thumb, entry.created, self._write(ident, thumb, entry.created))
        self._entries = [e for e in self._entries if e.identity.id != ident.id] + [entry]
        self.changed.emit()
        return entry

    def _write(self, ident: Identity, thumb: np.ndarray | None, created: float) -> Path:
        folder = self.root / _safe_id(ident.id)
        buf = io.BytesIO()
        np.save(buf, ident.wplus, allow_pickle=False)
        atomic_write_bytes(folder / "wplus.npy", buf.getvalue())
        if ident.aligned_face is not None:
            atomic_write_bytes(folder / "face.png", encode_png(ident.aligned_face))
        if thumb is not None:
            atomic_write_bytes(folder / "thumb.png", encode_png(thumb))
        meta = {"name": ident.name, "source": ident.source, "created": created, "info": _jsonable(ident.info),
                "format": "wplus-studio-identity-1"}
        atomic_write_bytes(folder / "meta.json", json.dumps(meta, indent=2).encode("utf-8"))
        return folder

    def rename(self, identity_id: str, name: str) -> None:
        name = name.strip()
        for i, e in enumerate(self._entries):
            if e.identity.id == identity_id and name and name != e.identity.name:
                ident = Identity(e.identity.id, name, e.identity.wplus, e.identity.aligned_face,
                                 e.identity.source, e.identity.info)
                folder = self._write(ident, e.thumb, e.created) if e.folder is not None else None
                self._entries[i] = IdentityEntry(ident, e.thumb, e.created, folder)
                self.changed.emit()
                return

    def delete(self, identity_id: str) -> None:
        """Remove an identity; `undo_delete()` brings it back (files go to `.trash/`)."""
        for i, e in enumerate(self._entries):
            if e.identity.id != identity_id:
                continue
            trash: Path | None = None
            if e.folder is not None and e.folder.exists():
                trash = self.root / ".trash" / f"{e.folder.name}-{uuid.uuid4().hex[:4]}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.move(str(e.folder), str(trash))
                except OSError as exc:
                    raise StorageError(f"Could not delete {e.identity.name}: {exc}.",
                                       "Check the permissions of the identities folder.") from exc
            del self._entries[i]
            self._deleted.append((i, e, trash))
            self.changed.emit()
            self.undo_available.emit(True)
            return

    def undo_delete(self) -> IdentityEntry | None:
        if not self._deleted:
            return None
        index, entry, trash = self._deleted.pop()
        if trash is not None and entry.folder is not None:
            shutil.move(str(trash), str(entry.folder))
        self._entries.insert(min(index, len(self._entries)), entry)
        self.changed.emit()
        self.undo_available.emit(bool(self._deleted))
        return entry

    def purge_trash(self) -> None:
        shutil.rmtree(self.root / ".trash", ignore_errors=True)
        self._deleted.clear()


def _safe_id(identity_id: str) -> str:
    keep = "".join(c for c in identity_id if c.isalnum() or c in "-_")
    return keep or new_identity_id()


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        if isinstance(value, np.ndarray):
            return value.tolist() if value.size <= 64 else f"<array {value.shape}>"
        return str(value)
