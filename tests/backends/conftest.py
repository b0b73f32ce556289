"""Tiny real models of EVERY IO-spec component, their ONNX exports, and runners of each backend.

The conformance suite (`test_backend_conformance.py`) runs the same checks on the runners that every
backend available here builds for every component; these fixtures make them once per session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Latent sides 8..16 (64..128 px images), batch 1..2 per image (the UNet sees up to 4 with CFG).
PROFILE_ARGS = {"min_side": 64, "opt_side": 64, "max_side": 128, "max_batch": 2}


def small_encoder() -> Any:
    """The small e4e stand-in (`tests.small_faces`) without input recording, so it can be exported."""
    from tests.small_faces import small_encoder

    return small_encoder("test:backends_small_e4e.", record=False)


def small_parser() -> Any:
    """ParseNet at the real 512² input with 4–8 channels and one residual block (rule weights)."""
    from tests.small_faces import small_parsenet

    return small_parsenet("test:backends_small_parsenet.")


def small_preview() -> Any:
    """The StyleGAN2 preview (reduced path to 256²) of a reduced-channel generator (widths / 16)."""
    from engine.networks.stylegan2.modules import GeneratorShape
    from engine.pipeline.face_preview import StyleGANPreview
    from engine.testing.stylegan2 import rule_decoder_state

    return StyleGANPreview.from_state_dict(rule_decoder_state(GeneratorShape.reduced(16)), channels_last=False)


@dataclass
class Models:
    """Torch modules per component, and what the torch runners of the pipeline are built from."""

    modules: dict[str, Any]
    components: Any  # SD15Components (its UNet carries the loaded W+ processors)
    wproj: Any
    preview: Any  # the StyleGANPreview of `modules["stylegan_preview"]`
    root: Path


def small_restorer() -> Any:
    """PSFRGAN's generator at 4–16 channels (the real 512² input and output)."""
    from engine.networks.psfrgan import PSFRGenerator
    from engine.testing.wbn import fill_module

    net = PSFRGenerator(ch_range=(4, 16), spade_hidden=8)
    fill_module(net, "test:backend_psfrgan.")
    return net.eval()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Models:
    import torch

    from engine.networks.sd15 import load_sd15
    from engine.networks.wplus import load_wplus_adapter
    from engine.testing.tiny import write_tiny_models

    root = tmp_path_factory.mktemp("backend_models")
    write_tiny_models(root)
    comps = load_sd15(root / "sd15")
    wproj = load_wplus_adapter(comps.unet, root / "wplus_adapter.bin")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        encoder, parser, preview = small_encoder(), small_parser(), small_preview()
    restorer = small_restorer()
    modules = {
        "text_encoder": comps.text_encoder,
        "unet": comps.unet,
        "vae_decoder": comps.vae,
        "identity_proj": wproj,
        "face_encoder": encoder,
        "face_parser": parser,
        "stylegan_preview": preview.module,
        "face_restorer": restorer,
    }
    return Models(modules, comps, wproj, preview, root)


@pytest.fixture(scope="session")
def profile():
    from engine.backends.profiles import ShapeProfile

    return ShapeProfile.dynamic(**PROFILE_ARGS)


@pytest.fixture(scope="session")
def onnx_dir(models, profile, tmp_path_factory) -> Path:
    """`<component>.onnx` (+ sidecar) of every component, exported with the app's exporter."""
    from engine.backends.base import IO_SPEC
    from export.to_onnx import export_onnx

    out = tmp_path_factory.mktemp("backend_onnx")
    for component in IO_SPEC:
        export_onnx(component, models.modules[component], out / f"{component}.onnx", profile=profile)
    return out

