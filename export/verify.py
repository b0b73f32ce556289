"""Check an export against its torch model: same seeded inputs, compared per component, NaN/Inf refused.

Tolerances are per component and precision (REFERENCE.md §10.3 gives the float32 scale of honest
differences: ~3e-6 between correct implementations on CPU; fp16 engines need a relative bound).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.backends.base import IO_SPEC
from engine.backends.profiles import ShapeProfile
from engine.backends.torch_modules import component_module
from engine.errors import EngineError
from export.components import CLIP_VOCAB, example_inputs, run_torch


@dataclass(frozen=True)
class Tolerance:
    """Pass when max|a−b| ≤ atol + rtol·max|b| (b the torch reference)."""

    atol: float
    rtol: float = 0.0


# fp32: ONNX Runtime vs torch on CPU. The parser's logits have std ≈ 17 under rule weights, so it is
# relative; the VAE and UNet accumulate over many layers.
TOLERANCES: Mapping[str, Mapping[str, Tolerance]] = {
    "fp32": {
        "text_encoder": Tolerance(1e-4),
        "unet": Tolerance(1e-4),
        "vae_decoder": Tolerance(1e-4),
        "face_encoder": Tolerance(1e-4),
        "identity_proj": Tolerance(1e-5),
        "face_parser": Tolerance(1e-4, 1e-5),
        "face_restorer": Tolerance(1e-4),
        "stylegan_preview": Tolerance(1e-4),
    },
    "fp16": {
        "text_encoder": Tolerance(1e-2, 1e-2),
        "unet": Tolerance(1e-2, 1e-2),
        "vae_decoder": Tolerance(2e-2, 1e-2),
        "face_encoder": Tolerance(1e-2, 1e-2),
        "identity_proj": Tolerance(5e-3, 1e-2),
        "face_parser": Tolerance(5e-2, 1e-2),
        "face_restorer": Tolerance(2e-2, 1e-2),
        "stylegan_preview": Tolerance(2e-2, 1e-2),
    },
}


class VerificationFailed(EngineError):
    """An export differs from its torch model beyond the tolerance, or produced NaN/Inf."""


@dataclass(frozen=True)
class OutputCheck:
    """Comparison of one output."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    ref_max_abs: float
    nonfinite: int
    limit: float

    @property
    def ok(self) -> bool:
        return self.nonfinite == 0 and math.isfinite(self.max_abs) and self.max_abs <= self.limit


@dataclass(frozen=True)
class VerifyReport:
    """Result of `verify_runner` / `verify_onnx`."""

    component: str
    precision: str
    outputs: tuple[OutputCheck, ...]
    seed: int
    backend: str = "onnxruntime"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def lines(self) -> list[str]:
        out = []
        for o in self.outputs:
            state = "ok" if o.ok else "FAILED"
            bad = f", {o.nonfinite} NaN/Inf" if o.nonfinite else ""
            out.append(
                f"{self.component}.{o.name} {o.shape} [{self.backend}, {self.precision}]: max|Δ| {o.max_abs:.3g} "
                f"(limit {o.limit:.3g}), mean|Δ| {o.mean_abs:.3g}, max|ref| {o.ref_max_abs:.3g}{bad} — {state}"
            )
        return out

    def raise_for_failure(self) -> None:
        """Raises VerificationFailed listing the failing outputs."""
        if not self.ok:
            raise VerificationFailed(
                f"The {self.backend} {self.component} does not match torch: " + "; ".join(
                    line for line, o in zip(self.lines(), self.outputs) if not o.ok
                ),
                "Re-export with fp32, or report the exporter/runtime versions with this output.",
            )


def compare(
    component: str,
    reference: Mapping[str, torch.Tensor],
    candidate: Mapping[str, torch.Tensor],
    precision: str = "fp32",
    tolerance: Tolerance | None = None,
) -> tuple[OutputCheck, ...]:
    """Compare named outputs against the torch reference; NaN/Inf in the candidate always fail."""
    tol = tolerance or TOLERANCES[precision][component]
    checks = []
    for name, ref in reference.items():
        ref64 = ref.detach().to("cpu", torch.float64)
        got = candidate[name].detach().to("cpu", torch.float64)
        if tuple(got.shape) != tuple(ref64.shape):
            raise VerificationFailed(f"{component}.{name} has shape {tuple(got.shape)}, torch gives {tuple(ref64.shape)}.")
        finite = torch.isfinite(got)
        nonfinite = int((~finite).sum())
        diff = (got - ref64).abs()
        ref_max = float(ref64.abs().max()) if ref64.numel() else 0.0
        max_abs = float(diff[finite].max()) if finite.any() else float("inf")
        mean_abs = float(diff[finite].mean()) if finite.any() else float("inf")
        checks.append(OutputCheck(name, tuple(ref64.shape), max_abs, mean_abs, ref_max, nonfinite,
                                  tol.atol + tol.rtol * ref_max))
    return tuple(checks)


def verify_runner(
    component: str,
    module: nn.Module,
    runner: object,
    profile: ShapeProfile,
    *,
    precision: str = "fp32",
    seed: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    vocab_size: int = CLIP_VOCAB,
    tolerance: Tolerance | None = None,
) -> VerifyReport:
    """Run torch and a runner (any backend) on the same seeded inputs and compare.

    The torch reference runs in float32 on CPU whatever the export's precision, so an fp16 export is
    judged against the exact model.

    Args:
        component: IO spec name.
        module: the torch model the export came from.
        runner: a Runner (ONNX Runtime, TensorRT) of the export.
        profile: gives the input shapes (its opt sizes) unless `shapes` does.
        precision: the export's precision (chooses the tolerance table).
        seed: input seed.
        shapes: explicit input shapes.
        vocab_size: bound of token ids.
        tolerance: overrides the table.
    """
    ref_module = component_module(component, module)
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in ref_module.parameters()):
        import copy

        ref_module = copy.deepcopy(ref_module).to("cpu", torch.float32)
    inputs = example_inputs(component, profile, seed=seed, shapes=shapes, vocab_size=vocab_size)
    reference = run_torch(component, ref_module, inputs)
    candidate = runner(**inputs)  # type: ignore[operator]
    checks = compare(component, reference, candidate, precision, tolerance)
    return VerifyReport(component, precision, checks, seed, getattr(runner, "backend", "?"))


def verify_onnx(
    component: str,
    module: nn.Module,
    onnx_path: str | os.PathLike[str],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    seeds: Sequence[int] = (0,),
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    vocab_size: int = CLIP_VOCAB,
    tolerance: Tolerance | None = None,
) -> list[VerifyReport]:
    """Verify an ONNX export on ONNX Runtime against its torch model, once per seed.

    Returns:
        One report per seed (check `.ok` or call `.raise_for_failure()`).

    Raises:
        ModelMissing, ModelCorrupt: the export cannot be opened.
    """
    from pathlib import Path

    from engine.backends.artifacts import read_artifact
    from engine.backends.ort_backend import OrtRunner, open_session

    path = Path(onnx_path)
    info = read_artifact(path, component)
    runner = OrtRunner(IO_SPEC[component], open_session(path, providers), info, path, "cpu")
    return [
        verify_runner(component, module, runner, info.profile, precision=info.precision, seed=s, shapes=shapes,
                      vocab_size=vocab_size, tolerance=tolerance)
        for s in seeds
    ]
