"""Exports for ControlNet, LoRA and FreeU requests (docs/EXPORT.md, "Controls on exported backends").

Layout inside an ONNX folder (what `engine.backends.ort_controls` looks for):

    controlnets/<sha16>.onnx        one graph per ControlNet file (its sha256, first 16 hex digits):
                                    (sample, timestep, text_embeds[77 tokens], control_image, conditioning_scale)
                                    → down_0 … down_{n-1}, mid (already scaled)
    unet_control.onnx               the W+ UNet with the residuals as inputs (…, down_0 … mid) → noise_pred
    unet_freeu.onnx                 flagged variants with FreeU's official factors (s1 0.6, s2 0.4, b1 1.1,
    unet_control_freeu.onnx         b2 1.2) built in; same inputs as their plain twins
    loras/<key>/…                   text_encoder, unet (and the variants above) with a LoRA set FUSED into the
                                    weights; <key> hashes every LoRA file's sha256 with its UNet and text
                                    weights, so a hit is exact; the VAE and WProj come from the folder above

FreeU is a flagged variant rather than runtime inputs because its factors are Python attributes of the up
blocks (a graph would need our own copy of diffusers' FreeU code to take them as tensors); the notebook
uses one fixed set of factors, so one variant runs its settings.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.backends.artifacts import ArtifactInfo, WeightSource, file_sha256, state_sha256, write_sidecar
from engine.backends.base import IO_SPEC, controlnet_spec, residual_names, unet_control_spec
from engine.backends.ort_controls import lora_set_key
from engine.backends.profiles import ShapeProfile
from export.to_onnx import DEFAULT_OPSET, PRECISIONS, ExportFailed, ExportResult, export_onnx

FREEU_OFFICIAL = {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}


class UNetControlModule(nn.Module):
    """WPlusUNet with the ControlNet residuals as positional inputs (the `unet_control` component)."""

    def __init__(self, wplus_unet: nn.Module) -> None:
        super().__init__()
        self.wplus_unet = wplus_unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor,
                wplus_tokens: torch.Tensor, wplus_scale: torch.Tensor, *residuals: torch.Tensor) -> torch.Tensor:
        return self.wplus_unet(sample, timestep, text_embeds, wplus_tokens, wplus_scale, tuple(residuals))


def _export_graph(
    component: str, module: nn.Module, inputs: Mapping[str, torch.Tensor], output_names: Sequence[str],
    target: Path, *, profile: ShapeProfile, precision: str, weights: Sequence[WeightSource],
    extra: Mapping[str, str], dynamic_batch: bool = True,
) -> ExportResult:
    """torch → ONNX with the given IO names, batch dynamic, written atomically with its sidecar."""
    import onnx

    t0 = time.perf_counter()
    dtype = PRECISIONS[precision]
    module = module.eval().to(dtype)
    args = tuple(v.to(dtype) if v.is_floating_point() else v for v in inputs.values())
    dynamic: tuple[Any, ...] = tuple({0: torch.export.Dim.DYNAMIC} if dynamic_batch and v.ndim >= 1 and v.shape[0] == 2
                                     else None for v in args)
    if isinstance(module, UNetControlModule):
        # forward(…5 inputs, *residuals): torch.export wants the variadic part as one nested tuple
        dynamic = (*dynamic[:5], tuple(dynamic[5:]))
    try:
        program = torch.onnx.export(module, args, None, input_names=list(inputs), output_names=list(output_names),
                                    opset_version=DEFAULT_OPSET, dynamo=True, dynamic_shapes=dynamic, optimize=True,
                                    verify=False)
    except Exception as exc:  # the exporter raises many internal types
        raise ExportFailed(f"Exporting {component} to ONNX failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    assert program is not None
    info = ArtifactInfo(component=component, precision=precision, opset=DEFAULT_OPSET, profile=profile,
                        weights=tuple(weights), onnx_file=target.name, torch_version=torch.__version__,
                        extra=dict(extra))
    program.model.metadata_props.update(info.metadata_props())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", suffix=".export", dir=target.parent))
    try:
        tmp = tmp_dir / target.name
        program.save(tmp, external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
        info = ArtifactInfo(**{**info.__dict__, "onnx_size": tmp.stat().st_size, "onnx_sha256": file_sha256(tmp)})
        os.replace(tmp, target)
        write_sidecar(target, info)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ExportResult(target, info, time.perf_counter() - t0)


def _example(profile: ShapeProfile, seed: int = 0) -> dict[str, torch.Tensor]:
    b = 2
    h = profile.range("H")
    w = profile.range("W")
    hh, ww = (h.opt if h else 64), (w.opt if w else 64)
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(b, 4, hh, ww, generator=g),
        "timestep": torch.tensor([500.0] * b),
        "text_embeds": torch.randn(b, 77, 768, generator=g),
    }


def controlnet_file_key(path: str | os.PathLike[str]) -> str:
    """The name under `controlnets/` of a ControlNet file or folder: its sha256, first 16 hex digits."""
    return WeightSource.of_file("controlnet", path).sha256[:16]


def unet_residual_count(unet: nn.Module) -> int:
    """How many down residuals a ControlNet of this UNet's architecture gives (12 for SD1.5): conv_in, then
    one per down-block ResNet and one per downsampler."""
    return 1 + sum(len(b.resnets) + (1 if getattr(b, "downsamplers", None) else 0) for b in unet.down_blocks)


def export_controlnet(controlnet_path: str | os.PathLike[str], onnx_dir: str | os.PathLike[str], *,
                      profile: ShapeProfile, precision: str = "fp32") -> ExportResult:
    """Export one ControlNet file (folder or A1111 single file) to `onnx_dir/controlnets/<sha16>.onnx`.

    Raises:
        ModelMissing, WrongModelFamily, ModelCorrupt: from `load_controlnet` (before anything is hashed).
    """
    from engine.networks.controlnet import ControlNetResiduals, load_controlnet, residual_count

    cn = load_controlnet(controlnet_path)
    src = WeightSource.of_file("controlnet", controlnet_path)
    n = residual_count(cn)
    spec = controlnet_spec(n)
    ex = _example(profile)
    h, w = ex["sample"].shape[2:]
    inputs = {**ex, "control_image": torch.rand(2, 3, 8 * h, 8 * w, generator=torch.Generator().manual_seed(1)),
              "conditioning_scale": torch.tensor([0.8])}
    target = Path(onnx_dir) / "controlnets" / f"{src.sha256[:16]}.onnx"
    return _export_graph("controlnet", ControlNetResiduals(cn), inputs, [t.name for t in spec.outputs], target,
                         profile=profile, precision=precision, weights=(src,),
                         extra={"n_down": str(n), "source": Path(controlnet_path).name})


def export_unet_variants(
    wplus_unet: nn.Module, onnx_dir: str | os.PathLike[str], *, profile: ShapeProfile, precision: str = "fp32",
    weights: Sequence[WeightSource] = (), control_residuals: int | None = None, freeu: bool = False,
    plain: bool = False,
) -> list[ExportResult]:
    """Export the UNet variants a control request needs into `onnx_dir`.

    Args:
        wplus_unet: the `WPlusUNet` (W+ processors installed; LoRAs already fused if any).
        control_residuals: export `unet_control` taking that many down residuals (+ mid); None: not.
        freeu: also export the FreeU-flagged variants (`unet_freeu`, and `unet_control_freeu`).
        plain: also export the plain `unet` (for a LoRA folder, which has no base UNet).
    """
    out = []
    unet = wplus_unet.unet
    weights = tuple(weights) or (WeightSource("state", state_sha256(wplus_unet)),)
    ex = _example(profile)
    base_inputs = {**ex, "wplus_tokens": torch.randn(2, 4, 768, generator=torch.Generator().manual_seed(2)),
                   "wplus_scale": torch.tensor([0.75])}
    residuals: dict[str, torch.Tensor] = {}
    if control_residuals is not None:
        # Residual shapes: what a ControlNet of this UNet's architecture produces, worked out on the meta
        # device (no weights, no compute); the example values themselves are seeded noise.
        from diffusers import ControlNetModel

        with torch.device("meta"), torch.no_grad():
            probe = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
            down, mid = probe(ex["sample"].to("meta"), ex["timestep"].to("meta"), ex["text_embeds"].to("meta"),
                              torch.zeros(2, 3, 8 * ex["sample"].shape[2], 8 * ex["sample"].shape[3]),
                              return_dict=False)
        g = torch.Generator().manual_seed(3)
        residuals = {n: 0.1 * torch.randn(tuple(r.shape), generator=g)
                     for n, r in zip(residual_names(control_residuals), [*down, mid])}
    variants: list[tuple[str, bool, bool]] = []
    if plain:
        variants.append(("unet", False, False))
    if control_residuals is not None:
        variants.append(("unet_control", True, False))
    if freeu:
        variants.append(("unet_freeu", False, True))
        if control_residuals is not None:
            variants.append(("unet_control_freeu", True, True))
    try:
        for name, control, with_freeu in variants:
            if with_freeu:
                unet.enable_freeu(**FREEU_OFFICIAL)
            else:
                unet.disable_freeu()
            extra = {"freeu": json.dumps(FREEU_OFFICIAL) if with_freeu else ""}
            target = Path(onnx_dir) / f"{name}.onnx"
            if control:
                spec = unet_control_spec(len(residuals) - 1)
                out.append(_export_graph("unet_control", UNetControlModule(wplus_unet), {**base_inputs, **residuals},
                                         [t.name for t in spec.outputs], target, profile=profile,
                                         precision=precision, weights=weights,
                                         extra={**extra, "n_down": str(len(residuals) - 1)}))
            else:
                out.append(_export_graph("unet", wplus_unet, base_inputs, [t.name for t in IO_SPEC["unet"].outputs],
                                         target, profile=profile, precision=precision, weights=weights, extra=extra))
    finally:
        unet.disable_freeu()
    return out


def export_lora_set(
    components: Any, wproj: Any, loras: Sequence[Any], onnx_dir: str | os.PathLike[str], *, profile: ShapeProfile,
    precision: str = "fp32", control_residuals: int | None = None, freeu: bool = False,
    weights: Sequence[WeightSource] = (),
) -> Path:
    """Export text encoder and UNet (and the requested variants) with `loras` fused, into `loras/<key>/`.

    Args:
        components: loaded `SD15Components` whose UNet carries the W+ processors.
        wproj: unused by the graphs (WProj comes from the base folder); kept for symmetry with the pipeline.
        loras: `engine.api.LoraSpec`s.

    Returns:
        The LoRA set's folder.
    """
    from engine.networks.lora import LoraPatcher
    from engine.networks.wplus import WPlusUNet

    del wproj
    patcher = LoraPatcher(components.unet, components.text_encoder)
    files = patcher.apply(tuple(loras), fused=True)
    key = lora_set_key([(f.short_hash, s.weight, s.text) for f, s in zip(files, loras)])
    folder = Path(onnx_dir) / "loras" / key
    lora_sources = tuple(WeightSource(f"lora:{f.name}@{s.weight:g}/{s.text:g}", file_sha256(f.path), str(f.path))
                         for f, s in zip(files, loras))
    try:
        src = (*weights, *lora_sources)
        export_onnx("text_encoder", components.text_encoder, folder / "text_encoder.onnx", profile=profile,
                    precision=precision, weights=src)
        export_unet_variants(WPlusUNet(components.unet), folder, profile=profile, precision=precision, weights=src,
                             control_residuals=control_residuals, freeu=freeu, plain=True)
        (folder / "loras.json").write_text(json.dumps(
            [{"name": f.name, "hash": f.short_hash, "weight": s.weight, "text_weight": s.text}
             for f, s in zip(files, loras)], indent=1), encoding="utf-8")
    finally:
        patcher.clear()
    return folder
