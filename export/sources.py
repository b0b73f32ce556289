"""Load the torch component an export starts from, out of the models folder, with its weight hashes.

Paths come from the model service (`ModelService.runtime_path`), so the exporter reads exactly the
files the app runs (safetensors conversions of pickles included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.backends.artifacts import WeightSource
from engine.config import EngineConfig

# Which weight roles each component depends on (a change of any of them makes the export stale).
COMPONENT_ROLES: dict[str, tuple[str, ...]] = {
    "text_encoder": ("sd15",),
    "unet": ("sd15", "adapter"),
    "vae_decoder": ("vae",),  # the separate VAE when configured/present, else the SD1.5 model's own
    "identity_proj": ("adapter",),
    "face_encoder": ("e4e",),
    "face_parser": ("parser",),
    "stylegan_preview": ("e4e",),  # the StyleGAN2 generator stored in the e4e checkpoint
    "face_restorer": ("restorer",),
}
EXPORTABLE = tuple(COMPONENT_ROLES)


@dataclass
class Source:
    """A loaded torch component and the weight files it was built from."""

    component: str
    module: Any
    weights: tuple[WeightSource, ...]


class ComponentLoader:
    """Loads components once (SD1.5 and the adapter are shared by several of them).

    Args:
        config: models folder and per-role overrides.
        dtype: parameter dtype to load at (export fp16 by loading fp16: no second copy).
    """

    def __init__(self, config: EngineConfig, dtype: Any = None) -> None:
        import torch

        from engine.models.service import ModelService

        self.config = config
        self.models = ModelService(config)
        self.dtype = dtype or torch.float32
        self._cache: dict[str, Any] = {}
        self._hashes: dict[str, WeightSource] = {}

    def _path(self, role: str) -> Any:
        return self.models.runtime_path(role)

    def _optional_path(self, role: str) -> Any:
        return self.models.optional_runtime_path(role)

    def _weights(self, role: str, path: Any) -> WeightSource:
        if role not in self._hashes:
            self._hashes[role] = WeightSource.of_file(role, path)
        return self._hashes[role]

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _sd15(self) -> Any:
        from engine.networks.sd15 import load_sd15

        vae = self._optional_path("vae")
        return self._once("sd15", lambda: load_sd15(self._path("sd15"), vae=vae, dtype=self.dtype))

    def _adapted_unet(self) -> tuple[Any, Any]:
        from engine.networks.wplus import load_wplus_adapter

        def make() -> tuple[Any, Any]:
            comps = self._sd15()
            wproj = load_wplus_adapter(comps.unet, self._path("adapter"))
            return comps.unet, wproj.to(self.dtype)

        return self._once("adapted", make)

    def load(self, component: str) -> Source:
        """The torch module of `component` and its weight sources.

        Raises:
            ModelMissing, ModelCorrupt, WrongModelFamily: from the loaders.
            ValueError: a component that cannot be exported.
        """
        if component not in COMPONENT_ROLES:
            raise ValueError(f"cannot export {component!r}; exportable: {', '.join(EXPORTABLE)}")
        if component == "text_encoder":
            module = self._sd15().text_encoder
            weights = (self._weights("sd15", self._path("sd15")),)
        elif component == "unet":
            module = self._adapted_unet()[0]
            weights = (self._weights("sd15", self._path("sd15")), self._weights("adapter", self._path("adapter")))
        elif component == "identity_proj":
            module = self._adapted_unet()[1]
            weights = (self._weights("adapter", self._path("adapter")),)
        elif component == "vae_decoder":
            module = self._sd15().vae
            vae = self._optional_path("vae")
            weights = (self._weights("vae", vae) if vae is not None else self._weights("sd15", self._path("sd15")),)
        elif component == "stylegan_preview":
            from engine.pipeline.face_preview import StyleGANPreview

            path = self._path("e4e")
            # No channels_last: layout hints mean nothing in ONNX. The module stops at the reduced 256² level.
            module = StyleGANPreview.from_checkpoint(path, channels_last=False).module.to(self.dtype)
            weights = (self._weights("e4e", path),)
        elif component == "face_restorer":
            from engine.networks.psfrgan import load_psfrgan

            path = self._path("restorer")
            module = load_psfrgan(path, dtype=self.dtype)
            weights = (self._weights("restorer", path),)
        else:
            role = "e4e" if component == "face_encoder" else "parser"
            module = self.models.load(role, device="cpu", dtype=str(self.dtype).removeprefix("torch."))
            weights = (self._weights(role, self._path(role)),)
        return Source(component, module, weights)
