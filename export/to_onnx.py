"""torch component → ONNX file with the IO spec's names, dynamic axes from a profile, and a record of its origin.

Uses the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, opset ≥ 18). Weights go to an
external-data file next to the model when they pass ~2 GB (protobuf's limit). The file is written in
a temporary folder beside the target and moved into place only after the ONNX checker passed, so a
failed or cancelled export never leaves a half-written model that looks valid.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.backends.artifacts import ArtifactInfo, WeightSource, file_sha256, state_sha256, write_sidecar
from engine.backends.base import IO_SPEC, TensorSpec
from engine.backends.profiles import ShapeProfile, dim_base
from engine.backends.torch_modules import component_module, module_dtype
from engine.errors import EngineError, StorageError
from export.components import CLIP_VOCAB, example_inputs, module_bytes

log = logging.getLogger(__name__)

MIN_OPSET = 18
DEFAULT_OPSET = 18
# Protobuf refuses messages over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_900_000_000
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


class ExportFailed(EngineError):
    """The torch → ONNX export or its check failed."""


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and what it recorded."""

    path: Path
    info: ArtifactInfo
    seconds: float


def export_onnx(
    component: str,
    module: nn.Module,
    out_path: str | os.PathLike[str],
    *,
    profile: ShapeProfile,
    precision: str = "fp32",
    weights: Sequence[WeightSource] = (),
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    vocab_size: int = CLIP_VOCAB,
    check: bool = True,
) -> ExportResult:
    """Export one component to ONNX.

    Args:
        component: an `IO_SPEC` name ("unet", "vae_decoder", "text_encoder", "face_encoder",
            "identity_proj", "face_parser").
        module: its torch model (see `export.components.component_module` for accepted types).
            A module of another precision is converted on a copy; load it at the target dtype to
            avoid the copy.
        out_path: the `.onnx` file to write (external data goes to `<name>.data` beside it).
        profile: dimension ranges; ranges of one value are exported static, the others dynamic.
        precision: "fp32" or "fp16" (the whole graph, inputs and outputs in that dtype).
        weights: the weight files the module was built from; empty records the state dict's hash.
        opset: ONNX opset (≥ 18).
        external_data: force weights inside (False) or beside (True) the file; None decides by size.
        vocab_size: bound of the example token ids (tiny test text encoders have small vocabularies).
        check: run the ONNX checker before the file is moved into place.

    Returns:
        The path, the recorded `ArtifactInfo` (also in `<name>.onnx.json` and the file's metadata) and
        the time taken.

    Raises:
        ExportFailed: the exporter or the ONNX checker failed (the message names the component).
        StorageError: the file could not be written.
        ValueError: an unknown component, precision or an opset below 18.
    """
    import onnx
    import onnx_ir as ir

    if component not in IO_SPEC:
        raise ValueError(f"unknown component {component!r}; known: {', '.join(IO_SPEC)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below {MIN_OPSET} (needed by the dynamo exporter's ops)")
    t0 = time.perf_counter()
    target = Path(out_path)
    spec = IO_SPEC[component]
    dtype = PRECISIONS[precision]
    if not weights:
        weights = (WeightSource("state", state_sha256(module)),)
    wrapped = component_module(component, module)
    if module_dtype(wrapped) != dtype:
        wrapped = copy.deepcopy(wrapped).to(dtype)
    device = next((p.device for p in wrapped.parameters()), torch.device("cpu"))

    args = _trace_inputs(component, profile, dtype, device, vocab_size)
    profile = _with_output_dims(component, wrapped, args, profile)
    dynamic = _dynamic_shapes(spec.inputs, profile)
    if external_data is None:
        external_data = module_bytes(wrapped) > EXTERNAL_DATA_THRESHOLD
    log.info("exporting %s (%s, profile %s, external data %s)", component, precision, profile.name, external_data)
    try:
        program = torch.onnx.export(
            wrapped,
            tuple(args[t.name] for t in spec.inputs),
            None,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic or None,
            optimize=True,
            verify=False,
            verbose=log.isEnabledFor(logging.DEBUG),  # its "[torch.onnx] …" lines are prints: --debug only
        )
    except Exception as exc:  # the exporter raises many internal types; report them as one failure
        raise ExportFailed(
            f"Exporting {component} to ONNX failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "Run with --debug for the exporter's report; check that the model loads and runs in torch first.",
        ) from exc
    assert program is not None
    model = program.model
    for value, tspec in zip(model.graph.inputs, spec.inputs):
        value.shape = ir.Shape(_spec_dims(tspec, profile))
    for value, tspec in zip(model.graph.outputs, spec.outputs):
        value.shape = ir.Shape(_spec_dims(tspec, profile))

    info = ArtifactInfo(
        component=component,
        precision=precision,
        opset=opset,
        profile=profile,
        weights=tuple(weights),
        onnx_file=target.name,
        torch_version=torch.__version__,
    )
    model.metadata_props.update(info.metadata_props())
    model.doc_string = f"W+ Studio {component} ({precision}, profile {profile.name})"

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", suffix=".export", dir=target.parent))
    try:
        tmp_file = tmp_dir / target.name
        try:
            program.save(tmp_file, external_data=external_data)
        except OSError as exc:
            raise StorageError(f"Could not write {target}: {exc}.", "Check free disk space and permissions.") from exc
        data_files = sorted(p for p in tmp_dir.iterdir() if p != tmp_file)
        if check:
            try:
                onnx.checker.check_model(str(tmp_file), full_check=not external_data)
            except Exception as exc:
                raise ExportFailed(f"The exported {component} failed the ONNX checker: {exc}") from exc
        ext_name = data_files[0].name if data_files else ""
        if len(data_files) > 1:
            raise ExportFailed(f"The exporter wrote unexpected files: {[p.name for p in data_files]}")
        info = ArtifactInfo(
            **{
                **info.__dict__,
                "onnx_size": tmp_file.stat().st_size,
                "onnx_sha256": file_sha256(tmp_file),
                "external_data": ext_name,
                "external_size": data_files[0].stat().st_size if data_files else -1,
                "external_sha256": file_sha256(data_files[0]) if data_files else "",
            }
        )
        # The data file first: a model whose weights are not yet in place must never be visible.
        for p in data_files:
            os.replace(p, target.parent / p.name)
        os.replace(tmp_file, target)
        write_sidecar(target, info)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ExportResult(target, info, time.perf_counter() - t0)


def _trace_inputs(
    component: str, profile: ShapeProfile, dtype: torch.dtype, device: torch.device, vocab_size: int
) -> dict[str, torch.Tensor]:
    """Example inputs at the profile's opt, with dynamic dimensions of size ≥ 2.

    torch.export specialises a dimension traced with size 1 (0/1 specialisation), so a dynamic batch
    traced at 1 would come out static.
    """
    spec = IO_SPEC[component]
    shapes: dict[str, tuple[int, ...]] = {}
    for t in spec.inputs:
        dims = []
        for d, s in zip(t.dims, profile.shapes(t, "opt")):
            rng = profile.range(dim_base(d)[1]) if isinstance(d, str) else None
            dims.append(min(max(s, 2), rng.max) if rng is not None and not rng.fixed else s)
        shapes[t.name] = tuple(dims)
    return example_inputs(component, profile, dtype=dtype, device=device, vocab_size=vocab_size, shapes=shapes)


def _with_output_dims(
    component: str, module: nn.Module, args: dict[str, torch.Tensor], profile: ShapeProfile
) -> ShapeProfile:
    """The profile plus the sizes of output dimensions no input determines (the preview's `R`), as traced.

    Such a size is a property of the module (the level the StyleGAN2 preview stops at), so it is
    recorded as a fixed range: the graph's output is static and the runtimes know the output shape.
    """
    spec = IO_SPEC[component]
    from_inputs = {dim_base(d)[1] for t in spec.inputs for d in t.dims if isinstance(d, str)}
    open_dims = {dim_base(d)[1] for t in spec.outputs for d in t.dims if isinstance(d, str)} - from_inputs
    open_dims = {d for d in open_dims if profile.range(d) is None}
    if not open_dims:
        return profile
    with torch.inference_mode():
        result = module(*(args[t.name] for t in spec.inputs))
    results = result if isinstance(result, (tuple, list)) else (result,)
    for t, r in zip(spec.outputs, results):
        for d, size in zip(t.dims, r.shape):
            if isinstance(d, str) and dim_base(d)[1] in open_dims:
                mult, base = dim_base(d)
                profile = profile.with_fixed(base, int(size) // mult)
                open_dims.discard(base)
    return profile


def _dynamic_shapes(inputs: Iterable[TensorSpec], profile: ShapeProfile) -> tuple[dict[int, object] | None, ...]:
    """Per-input (positional, so forward's parameter names don't matter) dynamic axes; () if none."""
    out: list[dict[int, object] | None] = []
    for t in inputs:
        axes: dict[int, object] = {}
        for axis, d in enumerate(t.dims):
            if not isinstance(d, str):
                continue
            _mult, base = dim_base(d)
            rng = profile.range(base)
            if rng is not None and not rng.fixed:
                # No bounds on the hint: torch.export excludes size 1 from a traced range (0/1
                # specialisation), so a profile like batch 1–2 traced at 2 would come out "static 2" and
                # fail. The graph itself is symbolic; the profile is enforced at run time instead.
                axes[axis] = torch.export.Dim.DYNAMIC
        out.append(axes or None)
    return tuple(out) if any(out) else ()


def _spec_dims(t: TensorSpec, profile: ShapeProfile) -> list[int | str]:
    """IO dims for the ONNX graph: fixed sizes as ints, dynamic ones under the spec's names."""
    dims: list[int | str] = []
    for d in t.dims:
        if isinstance(d, int):
            dims.append(d)
            continue
        mult, base = dim_base(d)
        rng = profile.range(base)
        dims.append(mult * rng.min if rng is not None and rng.fixed else d)
    return dims

