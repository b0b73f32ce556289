"""The model service: role + path + backend + device + dtype → a loaded, cached component.

One object per engine session (`Session.models`). It locates every weight file through the manifest
(a path the user gave wins, relative to the current directory), converts pickles to safetensors once
(so run-time loads never unpickle), loads each component once per key and keeps it, and also caches
the composed objects built on top (the pipeline, the face chain) so a whole session shares one copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import EngineConfig
from engine.errors import BackendUnavailable
from engine.models.locate import find_model, missing, override
from engine.models.manifest import Manifest, load_manifest

if TYPE_CHECKING:
    import torch

Loader = Callable[[Path, "torch.device", "torch.dtype"], Any]


def _load_e4e(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    from engine.networks.e4e import load_e4e

    return load_e4e(path, device=device, dtype=dtype)


def _load_parser(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    from engine.networks.parsenet import load_parsenet

    return load_parsenet(path, device=device, dtype=dtype)


def _load_preview(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    from engine.pipeline.face_preview import StyleGANPreview

    return StyleGANPreview.from_checkpoint(path, device=str(device), dtype=str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class Component:
    """A loadable component: the manifest role of its file, its default dtype, a loader per backend.

    `dtype` "auto" follows `EngineConfig.dtype`; the face networks and the preview are float32 (their
    numbers are checked against the official float32 code).
    """

    role: str
    dtype: str
    loaders: Mapping[str, Loader]


COMPONENTS: Mapping[str, Component] = {
    "e4e": Component("e4e", "float32", {"torch": _load_e4e}),
    "parser": Component("parser", "float32", {"torch": _load_parser}),
    "stylegan_preview": Component("e4e", "float32", {"torch": _load_preview}),
}


class ModelService:
    """Locates, converts, loads and caches the models of one configuration. Thread-safe.

    Args:
        config: the models folder, the paths the user gave, device and dtype.
        manifest: default `resources/models.toml`.
    """

    def __init__(self, config: EngineConfig, manifest: Manifest | None = None) -> None:
        self.config = config
        self._manifest = manifest
        self._items: dict[Hashable, Any] = {}
        # Re-entrant: a loader may itself get its parts from the service (the pipeline, the face chain).
        self._lock = threading.RLock()

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = load_manifest()
        return self._manifest

    # -- locating ---------------------------------------------------------------------------------
    def find(self, role: str) -> Path | None:
        """The file or folder for `role` as it is now (a user's path, the converted copy, the official
        file), or None when there is none. Nothing is converted."""
        return find_model(self.config, role, self.manifest)

    def locate(self, role: str) -> Path:
        """`find`, or ModelMissing saying what is missing, where it was expected and how to get it."""
        found = self.find(role)
        if found is None:
            raise missing(self.config, role, self.manifest)
        return found

    def runtime_path(self, role: str) -> Path:
        """The path a loader should open for `role`: a pickled checkpoint is converted to safetensors
        once (weights_only) and the copy is returned from then on.

        The manifest's files are converted beside them (`entry.converted`). Anything else that would be
        unpickled — a pickle the user named elsewhere, an SD1.5 single-file `.ckpt`, a separate VAE
        `.pt`, a diffusers folder whose weights are `.bin` — is converted into the models folder's
        `.converted/TAG/` (or the user cache dir when that folder cannot be written), where TAG hashes
        the source's path, size and mtime, so a changed source is converted again
        (`engine.models.converted`; `wplus models clean` removes copies nothing needs).

        Raises:
            ModelMissing: nothing found. ModelCorrupt, UnsafeCheckpoint: the pickle cannot be converted.
            WrongModelFamily: an SD1.5 `.ckpt` of another family (refused before anything is written).
        """
        return self._runtime(role, self.locate(role))

    def optional_runtime_path(self, role: str) -> Path | None:
        """`runtime_path` of an optional role (the separate VAE), or None when it is absent."""
        found = self.find(role)
        return None if found is None else self._runtime(role, found)

    def _runtime(self, role: str, found: Path) -> Path:
        from engine.models.converted import converted_copy, needs_conversion

        if not needs_conversion(found):
            return found
        entry = self.manifest.by_role(role)
        if entry is not None and entry.kind == "file" and entry.converted and override(self.config, role, entry) is None:
            dst = self.config.models_dir / entry.converted
            with self._lock:
                if not dst.is_file():
                    self._convert(found, dst)
            return dst
        check = None
        if role == "sd15" and found.is_file():
            from engine.networks.sd15 import check_single_file

            def check(state: Mapping[str, Any]) -> None:
                check_single_file(state, found)

        with self._lock:
            # SD1.5 and VAE files may be Lightning checkpoints with other entries; their loaders use the tensors only
            return converted_copy(found, self.config.models_dir, self.config.cache_dir, check=check,
                                  tensors_only=role in ("sd15", "vae"))

    def _convert(self, src: Path, dst: Path) -> None:
        from engine.models.convert import convert_to_safetensors
        from engine.models.verify import HashCache

        convert_to_safetensors(src, dst)
        # the converted copy has no published hash: `wplus models verify` checks it against this
        cache = HashCache(self.config.models_dir, self.config.cache_dir)
        cache.record(dst, cache.sha256(dst), "convert")
        cache.save()

    # -- loading ----------------------------------------------------------------------------------
    def load(self, component: str, *, backend: str = "torch", device: str | None = None,
             dtype: str | None = None) -> Any:
        """The loaded `component` ("e4e", "parser", "stylegan_preview"), built once per
        (component, file, backend, device, dtype).

        Args:
            backend: which loader (only "torch" for these components so far).
            device: default `config.device` ("auto": CUDA when available).
            dtype: default the component's own ("float32" for e4e, the parser and the preview).

        Raises:
            ModelMissing, ModelCorrupt, UnsafeCheckpoint: locating, converting or loading failed.
            BackendUnavailable: no loader for the backend, or the device/dtype cannot be used.
        """
        from engine.devices import resolve_device

        spec = COMPONENTS.get(component)
        if spec is None:
            raise ValueError(f"unknown component {component!r}; known: {', '.join(COMPONENTS)}")
        loader = spec.loaders.get(backend)
        if loader is None:
            raise BackendUnavailable(
                f"The {component} component cannot run on the {backend} backend yet.",
                f"Use one of: {', '.join(spec.loaders)}.",
            )
        want = dtype or (self.config.dtype if spec.dtype == "auto" else spec.dtype)
        dev, dt = resolve_device(device or self.config.device, want)
        path = self.runtime_path(spec.role)
        key = (component, str(path), backend, str(dev), str(dt))
        return self.get(key, lambda: loader(path, dev, dt))

    # -- the cache --------------------------------------------------------------------------------
    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The cached value of `key`, made by `make()` the first time."""
        with self._lock:
            if key not in self._items:
                self._items[key] = make()
            return self._items[key]

    def drop(self) -> None:
        """Forget every cached component (the session closes; memory goes back)."""
        with self._lock:
            self._items.clear()
