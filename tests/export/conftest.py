"""Tiny real components exported once per test session (ONNX Runtime CPU round trips)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Latent sides 8..16 (64..128 px images), batch 1..4: small enough for 2 busy cores.
TINY_PROFILE_ARGS = {"min_side": 64, "opt_side": 64, "max_side": 128, "max_batch": 2}


@dataclass
class TinyModels:
    unet: Any  # UNet2DConditionModel with the W+ processors installed and loaded
    vae: Any
    text_encoder: Any
    wproj: Any
    parser: Any
    components: Any  # the SD15Components the first four come from
    models_dir: Path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """engine.testing.tiny's SD1.5 + adapter, loaded through the app's own loaders, and a slim ParseNet."""
    import torch

    from engine.networks.parsenet import ParseNet
    from engine.networks.sd15 import load_sd15
    from engine.networks.wplus import load_wplus_adapter
    from engine.testing.tiny import write_tiny_models

    root = tmp_path_factory.mktemp("tiny_models")
    write_tiny_models(root)
    comps = load_sd15(root / "sd15")
    wproj = load_wplus_adapter(comps.unet, root / "wplus_adapter.bin")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        # ParseNet at the real 512×512 input but 8–16 channels and one residual block.
        parser = ParseNet(base_ch=8, res_depth=1, ch_range=(8, 16)).eval()
        with torch.no_grad():
            for m in parser.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.8, 1.2)
    return TinyModels(comps.unet, comps.vae, comps.text_encoder, wproj, parser, comps, root)


@pytest.fixture(scope="session")
def tiny_profile():
    from engine.backends.profiles import ShapeProfile

    return ShapeProfile.dynamic(**TINY_PROFILE_ARGS)


@pytest.fixture(scope="session")
def exported(tiny_models, tiny_profile, tmp_path_factory) -> Path:
    """A folder with `<component>.onnx` for the tiny text encoder, UNet, VAE decoder, WProj and ParseNet."""
    from export.to_onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    for component, module in (
        ("text_encoder", tiny_models.text_encoder),
        ("unet", tiny_models.unet),
        ("vae_decoder", tiny_models.vae),
        ("identity_proj", tiny_models.wproj),
        ("face_parser", tiny_models.parser),
    ):
        export_onnx(component, module, out / f"{component}.onnx", profile=tiny_profile)
    return out
