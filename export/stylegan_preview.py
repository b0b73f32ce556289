"""The StyleGAN2 face preview → ONNX: input `wplus` (B×n_latent×style_dim), output `image` (B×3×R×R)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from engine.networks.stylegan2.modules import PreviewModule

log = logging.getLogger(__name__)


def export_preview_onnx(
    module: PreviewModule, path: str | Path, *, opset: int = 18, dynamo: bool = True
) -> Path:
    """Export a preview module to ONNX: input `wplus` (B×n_latent×style_dim), output `image` (B×3×R×R).

    The batch axis is dynamic; the file is self-contained (no external data) and written atomically.

    Args:
        module: from `preview_module(...)` or `StyleGANPreview.module`.
        path: target `.onnx` file.
        opset: ONNX opset (≥ 18 for the dynamo exporter).
        dynamo: `torch.onnx.export(dynamo=True)` (torch.export + onnxscript); False selects the
            TorchScript exporter.

    Returns:
        The written path.
    """
    target = Path(path)
    gen = module.generator
    example = torch.zeros(2, gen.n_latent, gen.shape.style_dim, dtype=next(gen.parameters()).dtype)
    module = module.eval()
    memory_format = gen.memory_format
    gen.set_memory_format(None)  # layout hints mean nothing in ONNX; the runtime picks its own
    try:
        _export(module, example, target, opset, dynamo)
    finally:
        gen.set_memory_format(memory_format)
    return target


def _export(module: PreviewModule, example: torch.Tensor, target: Path, opset: int, dynamo: bool) -> None:
    from engine.fileio import atomic_write_bytes

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "preview.onnx"
        with torch.no_grad():
            if dynamo:
                torch.onnx.export(
                    module,
                    (example,),
                    str(out),
                    dynamo=True,
                    opset_version=opset,
                    input_names=["wplus"],
                    output_names=["image"],
                    dynamic_shapes={"wplus": {0: torch.export.Dim("B", min=1, max=64)}},
                    external_data=False,
                    verbose=log.isEnabledFor(logging.DEBUG),  # its "[torch.onnx] …" prints: --debug only
                )
            else:
                torch.onnx.export(
                    module,
                    (example,),
                    str(out),
                    dynamo=False,
                    opset_version=opset,
                    input_names=["wplus"],
                    output_names=["image"],
                    dynamic_axes={"wplus": {0: "B"}, "image": {0: "B"}},
                )
        atomic_write_bytes(target, out.read_bytes())
