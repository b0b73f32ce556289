"""What an exported artifact (ONNX file, TensorRT engine) records about its origin, and the checks on it.

Each ONNX export carries `metadata_props` (component, precision, profile, the hashes of the weights it
came from) and a sidecar JSON next to it (`unet.onnx.json`) with the same facts plus the size and hash
of the ONNX files themselves. A stale export (weights changed since), a damaged file or a file of
another component is refused with a message that says how to re-export.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.backends.profiles import ShapeProfile
from engine.errors import EngineMismatch, ModelCorrupt, ModelMissing

FORMAT = "wplus-onnx/1"
META_PREFIX = "wplus."
_CHUNK = 1 << 22
REEXPORT_HINT = "Export it again: python -m export onnx --models-dir <models> --out <folder> (or wplus-export onnx …)."


@dataclass(frozen=True)
class WeightSource:
    """One weights file (or in-memory state) an artifact was made from.

    Args:
        role: what the weights are ("sd15", "adapter", "e4e", "parser", "vae", "state").
        sha256: hex digest of the file, or of the state dict for in-memory modules (`state_sha256`).
        path: the file, when there is one (absolute or as given to the exporter).
        size, mtime_ns: the file's size and modification time when it was hashed (-1 if none).
    """

    role: str
    sha256: str
    path: str = ""
    size: int = -1
    mtime_ns: int = -1

    @classmethod
    def of_file(cls, role: str, path: str | os.PathLike[str]) -> WeightSource:
        """Hash a weights file, or every weights file of a folder (a diffusers model)."""
        p = Path(path).resolve()
        if p.is_dir():
            size, mtime, digest = _folder_digest(p)
            return cls(role, digest, str(p), size, mtime)
        st = p.stat()
        return cls(role, file_sha256(p), str(p), st.st_size, st.st_mtime_ns)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".data")


def _folder_digest(folder: Path) -> tuple[int, int, str]:
    """(total size, newest mtime, sha256 over relative names and file hashes) of a folder's weight files."""
    h = hashlib.sha256()
    size = mtime = 0
    for f in sorted(q for q in folder.rglob("*") if q.is_file() and q.suffix.lower() in _WEIGHT_SUFFIXES):
        st = f.stat()
        size += st.st_size
        mtime = max(mtime, st.st_mtime_ns)
        h.update(f"{f.relative_to(folder).as_posix()}={file_sha256(f)};".encode())
    return size, mtime, h.hexdigest()


@dataclass(frozen=True)
class ArtifactInfo:
    """The facts recorded with an ONNX export."""

    component: str
    precision: str  # "fp32" or "fp16"
    opset: int
    profile: ShapeProfile
    weights: tuple[WeightSource, ...]
    onnx_file: str = ""
    onnx_size: int = -1
    onnx_sha256: str = ""
    external_data: str = ""  # file name next to the .onnx, "" when the weights are inside it
    external_size: int = -1
    external_sha256: str = ""
    torch_version: str = ""
    format: str = FORMAT
    extra: Mapping[str, str] = field(default_factory=dict)

    def files_digest(self) -> str:
        """Hash of the exported files themselves (graph and external data), e.g. for engine cache keys."""
        if not self.external_sha256:
            return self.onnx_sha256
        return hashlib.sha256(f"{self.onnx_sha256}:{self.external_sha256}".encode()).hexdigest()

    def weights_digest(self) -> str:
        """One hash over all weight sources (order-independent)."""
        h = hashlib.sha256()
        for w in sorted(self.weights, key=lambda w: w.role):
            h.update(f"{w.role}={w.sha256};".encode())
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "component": self.component,
            "precision": self.precision,
            "opset": self.opset,
            "profile": self.profile.to_dict(),
            "weights": [w.__dict__ for w in self.weights],
            "weights_digest": self.weights_digest(),
            "onnx_file": self.onnx_file,
            "onnx_size": self.onnx_size,
            "onnx_sha256": self.onnx_sha256,
            "external_data": self.external_data,
            "external_size": self.external_size,
            "external_sha256": self.external_sha256,
            "torch_version": self.torch_version,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactInfo:
        return cls(
            component=str(data["component"]),
            precision=str(data.get("precision", "fp32")),
            opset=int(data.get("opset", 0)),
            profile=ShapeProfile.from_dict(data.get("profile", {})),
            weights=tuple(WeightSource(**w) for w in data.get("weights", [])),
            onnx_file=str(data.get("onnx_file", "")),
            onnx_size=int(data.get("onnx_size", -1)),
            onnx_sha256=str(data.get("onnx_sha256", "")),
            external_data=str(data.get("external_data", "")),
            external_size=int(data.get("external_size", -1)),
            external_sha256=str(data.get("external_sha256", "")),
            torch_version=str(data.get("torch_version", "")),
            format=str(data.get("format", FORMAT)),
            extra={str(k): str(v) for k, v in dict(data.get("extra", {})).items()},
        )

    def metadata_props(self) -> dict[str, str]:
        """What goes into the ONNX file's own metadata (the sidecar adds the file hashes)."""
        return {
            f"{META_PREFIX}format": self.format,
            f"{META_PREFIX}component": self.component,
            f"{META_PREFIX}precision": self.precision,
            f"{META_PREFIX}profile": json.dumps(self.profile.to_dict(), sort_keys=True),
            f"{META_PREFIX}weights": json.dumps([w.__dict__ for w in self.weights], sort_keys=True),
            f"{META_PREFIX}weights_digest": self.weights_digest(),
        }


def sidecar_path(onnx_path: str | os.PathLike[str]) -> Path:
    """`unet.onnx` → `unet.onnx.json`."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Streamed sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(state: Any) -> str:
    """Hash of a module's (or state dict's) tensors: names, dtypes, shapes and bytes, in key order."""
    import torch

    sd = state.state_dict() if isinstance(state, torch.nn.Module) else state
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_sidecar(onnx_path: str | os.PathLike[str], info: ArtifactInfo) -> Path:
    """Write `info` next to the ONNX file (atomically)."""
    from engine.fileio import atomic_write_bytes

    path = sidecar_path(onnx_path)
    atomic_write_bytes(path, (json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return path


def read_artifact(onnx_path: str | os.PathLike[str], component: str | None = None, *, deep: bool = False) -> ArtifactInfo:
    """Read and check an export's sidecar and files before a runtime opens it.

    Args:
        onnx_path: the `.onnx` file.
        component: the component it must be (a UNet file where a VAE is expected is refused).
        deep: also re-hash the ONNX file against the recorded sha256 (slow for GBs).

    Returns:
        The recorded facts.

    Raises:
        ModelMissing: the ONNX file or its external-data file is not there.
        ModelCorrupt: an unreadable sidecar, or files whose size (or hash, with `deep`) changed.
        EngineMismatch: a file of another component.
    """
    p = Path(onnx_path)
    if not p.is_file():
        raise ModelMissing(f"The exported model {p} does not exist.", REEXPORT_HINT)
    side = sidecar_path(p)
    if not side.is_file():
        raise ModelCorrupt(
            f"{p} has no export record ({side.name}); its origin and weights cannot be checked.", REEXPORT_HINT
        )
    try:
        info = ArtifactInfo.from_dict(json.loads(side.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelCorrupt(f"The export record {side} is damaged: {exc}.", REEXPORT_HINT) from exc
    if component is not None and info.component != component:
        raise EngineMismatch(f"{p} holds the {info.component} component, not {component}.", REEXPORT_HINT)
    size = p.stat().st_size
    if info.onnx_size >= 0 and size != info.onnx_size:
        raise ModelCorrupt(
            f"{p} has {size} bytes but was exported with {info.onnx_size}: it is truncated or was replaced.",
            REEXPORT_HINT,
        )
    if info.external_data:
        data = p.with_name(info.external_data)
        if not data.is_file():
            raise ModelMissing(f"The weights file {data} of {p.name} is missing (it must sit next to it).", REEXPORT_HINT)
        if info.external_size >= 0 and data.stat().st_size != info.external_size:
            raise ModelCorrupt(
                f"{data} has {data.stat().st_size} bytes but was exported with {info.external_size}: "
                "it is truncated or was replaced.",
                REEXPORT_HINT,
            )
    if deep and info.onnx_sha256 and file_sha256(p) != info.onnx_sha256:
        raise ModelCorrupt(f"{p} does not match the hash recorded at export: it was modified.", REEXPORT_HINT)
    if deep and info.external_sha256 and file_sha256(p.with_name(info.external_data)) != info.external_sha256:
        raise ModelCorrupt(f"{info.external_data} does not match the hash recorded at export: it was modified.",
                           REEXPORT_HINT)
    return info


def stale_weights(info: ArtifactInfo, current: Iterable[WeightSource] | Mapping[str, str]) -> list[str]:
    """Roles whose weights differ from what the artifact was made from (empty list: up to date).

    `current` is either WeightSources or a role → sha256 mapping; roles not given are not compared.
    """
    now = current if isinstance(current, Mapping) else {w.role: w.sha256 for w in current}
    stale = []
    for w in info.weights:
        if w.role in now and now[w.role] != w.sha256:
            stale.append(w.role)
    return stale


def check_up_to_date(
    onnx_path: str | os.PathLike[str], info: ArtifactInfo, current: Iterable[WeightSource] | Mapping[str, str]
) -> None:
    """Raise if the weights changed since the export.

    Raises:
        EngineMismatch: naming the roles whose weights changed.
    """
    stale = stale_weights(info, current)
    if stale:
        raise EngineMismatch(
            f"{Path(onnx_path).name} was exported from other weights than the current ones ({', '.join(stale)} changed).",
            REEXPORT_HINT,
        )


def changed_weight_files(info: ArtifactInfo, *, missing_is_change: bool = False) -> list[str]:
    """Roles whose recorded weights file changed on disk (cheap: size and mtime first, then sha256).

    In-memory sources (no path) are skipped; files no longer at their recorded path count as changed
    only with `missing_is_change` (an export copied to another machine has other paths).
    """
    changed = []
    for w in info.weights:
        if not w.path:
            continue
        p = Path(w.path)
        if not p.exists():
            if missing_is_change:
                changed.append(w.role)
            continue
        if p.is_dir():
            size, mtime, _ = _folder_digest_stat(p)
        else:
            st = p.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        if size == w.size and mtime == w.mtime_ns:
            continue
        if WeightSource.of_file(w.role, p).sha256 != w.sha256:
            changed.append(w.role)
    return changed


def _folder_digest_stat(folder: Path) -> tuple[int, int, None]:
    size = mtime = 0
    for f in folder.rglob("*"):
        if f.is_file() and f.suffix.lower() in _WEIGHT_SUFFIXES:
            st = f.stat()
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
    return size, mtime, None
