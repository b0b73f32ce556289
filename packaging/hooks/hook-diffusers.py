"""PyInstaller hook for diffusers.

diffusers reads package metadata at import (its dependency checks call importlib.metadata.version on
torch, transformers, safetensors, huggingface_hub, …), and resolves its public names lazily
(`_LazyModule`), so the modules W+ Studio uses are listed explicitly. The pipelines are not needed:
the engine builds the UNet/VAE itself and only uses the single-file converters.
"""

import contextlib

from PyInstaller.utils.hooks import collect_submodules, copy_metadata

datas = copy_metadata("diffusers", recursive=True)
for dist in ("torch", "transformers", "safetensors", "huggingface_hub", "tokenizers", "numpy", "Pillow"):
    # Not installed in this build environment: diffusers then treats it as absent.
    with contextlib.suppress(Exception):
        datas += copy_metadata(dist)


def _wanted(name: str) -> bool:
    if name.startswith("diffusers.pipelines."):
        return name.split(".")[2] in ("pipeline_utils", "pipeline_loading_utils", "stable_diffusion")
    return not name.startswith(("diffusers.commands", "diffusers.experimental", "diffusers.modular_pipelines"))


hiddenimports = collect_submodules("diffusers.models", filter=_wanted)
hiddenimports += collect_submodules("diffusers.schedulers", filter=_wanted)
hiddenimports += collect_submodules("diffusers.loaders", filter=_wanted)
hiddenimports += collect_submodules("diffusers.utils", filter=_wanted)
hiddenimports += ["diffusers.configuration_utils", "diffusers.image_processor", "diffusers.pipelines.pipeline_utils"]
