"""Shape profiles: the ranges an exported component accepts for the IO spec's named dimensions.

One profile serves the ONNX export (a dimension whose range is a single value is exported static,
the others as dynamic axes), the TensorRT optimization profiles (min/opt/max per input) and the
runtime check that refuses an input outside what an artifact was built for, with a clear message.

Dimension names come from `engine.backends.base.IO_SPEC`: `B` batch, `H`/`W` latent height/width
(image / 8), `R` preview resolution. Derived names such as `8H` (the VAE's output) are computed
from their base dimension and never appear in a profile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.backends.base import ComponentSpec, TensorSpec
from engine.errors import InvalidInput

_DERIVED = re.compile(r"^(\d+)([A-Za-z_]\w*)$")
LATENT_FACTOR = 8  # SD1.5's VAE: image side = 8 × latent side


def dim_base(dim: str) -> tuple[int, str]:
    """`"8H"` → (8, "H"); `"B"` → (1, "B")."""
    m = _DERIVED.match(dim)
    return (int(m.group(1)), m.group(2)) if m else (1, dim)


@dataclass(frozen=True)
class DimRange:
    """Inclusive range of one named dimension, with the size the engine is tuned for."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"a dimension range needs 1 ≤ min ≤ opt ≤ max, got {self}")

    @property
    def fixed(self) -> bool:
        return self.min == self.max


@dataclass(frozen=True)
class ShapeProfile:
    """Ranges of named dimensions (dimensions not listed keep the example's size, i.e. are static).

    Args:
        name: a short label shown to the user and used in cache keys ("static-512", "dynamic").
        dims: (dimension name, range) pairs, e.g. (("B", DimRange(1, 2, 2)), ("H", DimRange(64, 64, 64))).
    """

    name: str
    dims: tuple[tuple[str, DimRange], ...]

    @classmethod
    def static(cls, height: int = 512, width: int = 512, batch: int = 1) -> ShapeProfile:
        """One image size (pixels); the batch goes from 1 to 2·batch (the UNet sees cond + uncond).

        Raises:
            InvalidInput: a side that is not a positive multiple of 8.
        """
        h, w = _latent(height, "height"), _latent(width, "width")
        b = DimRange(1, 2 * batch, 2 * batch)
        return cls(f"static-{height}x{width}-b{batch}", (("B", b), ("H", DimRange(h, h, h)), ("W", DimRange(w, w, w))))

    @classmethod
    def dynamic(
        cls, min_side: int = 256, opt_side: int = 512, max_side: int = 1024, max_batch: int = 2
    ) -> ShapeProfile:
        """Any image side (pixels, multiples of 8) in [min_side, max_side] and 1 to 2·max_batch per call."""
        lo, opt, hi = _latent(min_side, "min side"), _latent(opt_side, "opt side"), _latent(max_side, "max side")
        side = DimRange(lo, opt, hi)
        return cls(
            f"dynamic-{min_side}-{max_side}-b{max_batch}",
            (("B", DimRange(1, min(2, 2 * max_batch), 2 * max_batch)), ("H", side), ("W", side)),
        )

    def with_fixed(self, dim: str, size: int) -> ShapeProfile:
        """This profile plus a fixed size for a dimension the inputs do not determine (the preview's `R`)."""
        dims = (*((n, r) for n, r in self.dims if n != dim), (dim, DimRange(size, size, size)))
        return ShapeProfile(self.name, dims)

    def range(self, dim: str) -> DimRange | None:
        """The range of a base dimension name, or None when the profile leaves it to the example."""
        for name, rng in self.dims:
            if name == dim:
                return rng
        return None

    def key(self) -> str:
        """Canonical text for cache keys: equal profiles give equal keys."""
        parts = [f"{n}={r.min}:{r.opt}:{r.max}" for n, r in sorted(self.dims)]
        return ",".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dims": {n: [r.min, r.opt, r.max] for n, r in self.dims}}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ShapeProfile:
        dims = data.get("dims", {})
        if not isinstance(dims, Mapping):
            raise ValueError("profile 'dims' must be a mapping")
        return cls(str(data.get("name", "")), tuple((str(n), DimRange(*map(int, v))) for n, v in dims.items()))

    # -- shapes of one component ---------------------------------------------------------------------
    def shapes(self, spec: TensorSpec, which: str = "opt") -> tuple[int, ...]:
        """The concrete shape of `spec` at the profile's min, opt or max.

        Raises:
            ValueError: a dynamic dimension the profile does not give a range for.
        """
        out: list[int] = []
        for d in spec.dims:
            if isinstance(d, int):
                out.append(d)
                continue
            mult, base = dim_base(d)
            rng = self.range(base)
            if rng is None:
                raise ValueError(f"profile {self.name!r} has no range for dimension {base!r} of {spec.name}")
            out.append(mult * getattr(rng, which))
        return tuple(out)

    def input_ranges(self, component: ComponentSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape per input, as TensorRT optimization profiles take them."""
        return {
            t.name: (self.shapes(t, "min"), self.shapes(t, "opt"), self.shapes(t, "max")) for t in component.inputs
        }


def check_shapes(
    component: ComponentSpec,
    shapes: Mapping[str, tuple[int, ...]],
    profile: ShapeProfile | None = None,
    artifact: str = "",
) -> dict[str, int]:
    """Check input shapes against the IO spec (and a profile); return the named dimensions' values.

    Raises:
        InvalidInput: a missing input, a wrong rank, a wrong fixed size, inconsistent named
            dimensions or a size outside the profile.
    """
    where = f" of {artifact}" if artifact else ""
    values: dict[str, int] = {}
    for t in component.inputs:
        if t.name not in shapes:
            raise InvalidInput(
                f"The {component.name} component{where} needs the input '{t.name}'.",
                f"It takes {', '.join(i.name for i in component.inputs)}.",
            )
        shape = tuple(int(s) for s in shapes[t.name])
        if len(shape) != len(t.dims):
            raise InvalidInput(
                f"Input '{t.name}' of {component.name} has shape {shape}; expected {len(t.dims)} dimensions {t.dims}."
            )
        for axis, (d, s) in enumerate(zip(t.dims, shape)):
            if isinstance(d, int):
                if s != d:
                    raise InvalidInput(
                        f"Input '{t.name}' of {component.name} has size {s} on axis {axis}; it must be {d} "
                        f"(shape {shape}, expected {t.dims})."
                    )
                continue
            mult, base = dim_base(d)
            if s % mult:
                raise InvalidInput(f"Input '{t.name}' of {component.name}: axis {axis} ({s}) must be a multiple of {mult}.")
            v = s // mult
            if base in values and values[base] != v:
                raise InvalidInput(
                    f"Inputs of {component.name} disagree on dimension {base}: {values[base]} and {v} "
                    f"(input '{t.name}', shape {shape})."
                )
            values[base] = v
    if profile is not None:
        for base, v in values.items():
            rng = profile.range(base)
            if rng is not None and not (rng.min <= v <= rng.max):
                raise InvalidInput(
                    f"The {component.name} engine{where} was built for {_describe(base, rng)}; "
                    f"this call needs {_describe_value(base, v)}.",
                    "Choose a size inside that range, or export/build again with a profile that covers it "
                    "(python -m export onnx --profile dynamic …).",
                )
        # Output-only dimensions (the preview's resolution R) are fixed by the profile.
        values.update({n: r.min for n, r in profile.dims if n not in values and r.fixed})
    return values


def output_shape(spec: TensorSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
    """Shape of an output from the named dimensions' values (`8H` → 8·H)."""
    out = []
    for d in spec.dims:
        if isinstance(d, int):
            out.append(d)
        else:
            mult, base = dim_base(d)
            out.append(mult * dims[base])
    return tuple(out)


def _latent(side: int, what: str) -> int:
    if side <= 0 or side % LATENT_FACTOR:
        raise InvalidInput(f"The image {what} {side} is not a positive multiple of {LATENT_FACTOR}.")
    return side // LATENT_FACTOR


def _describe(base: str, rng: DimRange) -> str:
    if base in ("H", "W"):
        side = "height" if base == "H" else "width"
        lo, hi = rng.min * LATENT_FACTOR, rng.max * LATENT_FACTOR
        return f"image {side} {lo} px" if lo == hi else f"image {side} {lo}–{hi} px"
    label = _label(base)
    return f"{label} {rng.min}" if rng.fixed else f"{label} {rng.min}–{rng.max}"


def _describe_value(base: str, v: int) -> str:
    if base in ("H", "W"):
        return f"image {'height' if base == 'H' else 'width'} {v * LATENT_FACTOR} px"
    return f"{_label(base)} {v}"


def _label(base: str) -> str:
    return {"B": "batch", "R": "resolution"}.get(base, base)


def coerce_inputs(component: ComponentSpec, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Turn Python numbers and 0-d tensors into the spec's shapes, as the torch backend accepts them.

    The pipeline passes `wplus_scale` as a Python float (0.0 during delayed conditioning) and may pass
    a scalar timestep; exported graphs take (1,) and (B,) tensors. A scalar for a (B,) input is
    expanded to the batch of the other inputs.
    """
    import torch

    out: dict[str, Any] = dict(inputs)
    batch = None
    for t in component.inputs:
        v = inputs.get(t.name)
        if isinstance(v, torch.Tensor) and v.ndim == len(t.dims) and t.dims and t.dims[0] == "B" and v.ndim > 1:
            batch = int(v.shape[0])
            break
    for t in component.inputs:
        v = inputs.get(t.name)
        if v is None:
            continue
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(v, dtype=torch.int64 if t.dtype == "int64" else torch.float32)
        if v.ndim == 0 and len(t.dims) == 1:
            n = batch if (t.dims[0] == "B" and batch is not None) else (t.dims[0] if isinstance(t.dims[0], int) else 1)
            v = v.reshape(1).expand(n)
        out[t.name] = v
    return out
