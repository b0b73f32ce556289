"""The StyleGAN2 generator's nn.Modules, with the official (rosinality/e4e) parameter and buffer names.

- *activation modulation*: a styled conv scales the input activations by the style and the output
  channels by the demodulation factor instead of building per-sample weights, so the conv weights
  are static (batch-friendly, ONNX/TensorRT-friendly); exact up to float rounding;
- the noise images are the checkpoint's stored buffers (never redrawn), so the output is stable;
- synthesis is a list of stages, so a caller can stop after any level and read that level's RGB skip
  (a coarse preview, not a downscaled full image: the later to_rgb layers still add colour and detail).

Names equal the official ones, so a checkpoint's `decoder.*` entries (prefix stripped) load strictly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InvalidInput, ModelCorrupt
from engine.networks.stylegan2.ops import LRELU_GAIN, fir_kernel, fused_leaky_relu, upfirdn2d

# Official (rosinality/e4e) channel widths for channel_multiplier 2, by resolution.
OFFICIAL_CHANNELS: Mapping[int, int] = {
    4: 512,
    8: 512,
    16: 512,
    32: 512,
    64: 512,
    128: 256,
    256: 128,
    512: 64,
    1024: 32,
}
REDUCED_RESOLUTION = 256  # the reduced preview path stops after this level


@dataclass(frozen=True)
class GeneratorShape:
    """Architecture of a StyleGAN2 generator; `channels` maps resolution → width."""

    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channels: tuple[tuple[int, int], ...] = tuple(OFFICIAL_CHANNELS.items())

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def num_layers(self) -> int:
        """Number of styled convs (= noise buffers): 17 for 1024²."""
        return (self.log_size - 2) * 2 + 1

    def width(self, res: int) -> int:
        return dict(self.channels)[res]

    @classmethod
    def reduced(cls, divisor: int, size: int = 1024, style_dim: int = 512, n_mlp: int = 8) -> GeneratorShape:
        """The official widths divided by `divisor` (at least 1): the same code path, much cheaper (tests)."""
        chans = tuple((r, max(1, c // divisor)) for r, c in OFFICIAL_CHANNELS.items() if r <= size)
        return cls(size=size, style_dim=style_dim, n_mlp=n_mlp, channels=chans)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with runtime weight scaling `lr_mul/√in` (and bias scaling `lr_mul`)."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_dim, in_dim))  # always loaded; no random init
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class Blur(nn.Module):
    """Holds the FIR kernel buffer (`…blur.kernel`) and applies `upfirdn2d(pad=(p0, p1))`."""

    kernel: torch.Tensor

    def __init__(self, pad: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.from_numpy(fir_kernel()).float())
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2× FIR upsampling of the RGB skip (`…upsample.kernel`): zero border, not bilinear."""

    kernel: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.from_numpy(fir_kernel()).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=2, pad=(2, 1))


class ModulatedConv2d(nn.Module):
    """Styled conv in the activation-modulation form (STYLEGAN2.md §2.2, "equivalent formulation")."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        if upsample:  # registered first: the official state-dict order is weight, blur, modulation
            self.blur = Blur((1, 1))
        self.weight = nn.Parameter(torch.zeros(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample
        self.memory_format: torch.memory_format | None = None
        # (weight storage, version, format) → derived static weights; a load or .to() changes the key.
        self._static: tuple[Any, torch.Tensor, torch.Tensor] | None = None

    def static_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W·scale as Cout×Cin×k×k, Σ_k (W·scale)² as Cout×Cin): static, cached between calls."""
        usable = not torch.is_grad_enabled() and not _tracing()
        key = (self.weight.data_ptr(), self.weight._version, self.memory_format) if usable else None
        if usable and self._static is not None and self._static[0] == key:
            return self._static[1], self._static[2]
        weight = self.weight[0] * self.scale
        if self.memory_format is not None:
            weight = weight.contiguous(memory_format=self.memory_format)
        sq = (weight * weight).sum(dim=(2, 3))
        if usable:
            self._static = (key, weight, sq)
        return weight, sq

    def conv_and_demod(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The conv of the style-scaled input with the static weights, and the demodulation factor
        d (B×Cout, None without demodulation) that the output still has to be multiplied by."""
        s = self.modulation(w)  # B×Cin
        weight, sq = self.static_weights()
        x = x * s[:, :, None, None]
        if self.upsample:
            # Transposed conv (stride 2, output 2H+1) with W as is, then the (1,1)-padded blur.
            y = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            y = self.blur(y)
        else:
            y = F.conv2d(x, weight, padding=self.padding)
        d = torch.rsqrt((s * s) @ sq.t() + 1e-8) if self.demodulate else None
        return y, d

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y, d = self.conv_and_demod(x, w)
        return y if d is None else y * d[:, :, None, None]


class NoiseInjection(nn.Module):
    """`x + weight · noise` (weight: a scalar strength); applied fused in `StyledConv.forward`."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class FusedLeakyReLU(nn.Module):
    """`leaky_relu(x + bias, 0.2) · √2`; applied fused in `StyledConv.forward`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))


class StyledConv(nn.Module):
    """Modulated conv → + strength·noise → + bias → leaky ReLU(0.2) → ·√2 (STYLEGAN2.md §2.2)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        y, d = self.conv.conv_and_demod(x, w)
        # Demodulation, noise, bias and gain in three passes over the activations instead of five
        # (~25 % of the CPU time at 256²): leaky_relu(v)·√2 = leaky_relu(v·√2) since √2 > 0.
        g = LRELU_GAIN
        out = torch.addcmul(
            (self.noise.weight * g) * noise, y, (d * g)[:, :, None, None] if d is not None else y.new_tensor(g)
        )
        out.add_((self.activate.bias * g).reshape(1, -1, 1, 1))
        return F.leaky_relu_(out, 0.2)


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.zeros(1, channels, 4, 4))


class NoiseBuffers(nn.Module):
    def __init__(self, num_layers: int, log_size: int) -> None:
        super().__init__()
        for j in range(num_layers):
            r = 2 ** ((j + 5) // 2)
            self.register_buffer(f"noise_{j}", torch.zeros(1, 1, r, r))
        self.num_layers = num_layers

    def get(self, j: int) -> torch.Tensor:
        return getattr(self, f"noise_{j}")


class StyleGAN2Generator(nn.Module):
    """rosinality's `Generator` (as in e4e) for W+ input, with the official state-dict names.

    Synthesis is a fixed list of *stages* (conv1, to_rgb1, then per level: upsampling conv, conv,
    to_rgb), each reading one W+ row; the row index never decreases along the list, which is what
    makes per-stage caching exact (STYLEGAN2.md §2.1).
    """

    def __init__(self, shape: GeneratorShape = GeneratorShape()) -> None:
        super().__init__()
        self.shape = shape
        sd = shape.style_dim
        if shape.n_mlp > 0:
            self.style = nn.Sequential(
                PixelNorm(), *(EqualLinear(sd, sd, lr_mul=0.01, activation=True) for _ in range(shape.n_mlp))
            )
        self.input = ConstantInput(shape.width(4))
        self.conv1 = StyledConv(shape.width(4), shape.width(4), sd)
        self.to_rgb1 = ToRGB(shape.width(4), sd, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = shape.width(4)
        for i in range(3, shape.log_size + 1):
            out_ch = shape.width(2**i)
            self.convs.append(StyledConv(in_ch, out_ch, sd, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, sd))
            self.to_rgbs.append(ToRGB(out_ch, sd))
            in_ch = out_ch
        self.noises = NoiseBuffers(shape.num_layers, shape.log_size)
        self.n_latent = shape.log_size * 2 - 2
        self.memory_format: torch.memory_format | None = None

    def set_memory_format(self, memory_format: torch.memory_format | None) -> None:
        """Run the convs in `memory_format` (torch.channels_last is faster on CPU); None = default."""
        self.memory_format = memory_format
        for m in self.modules():
            if isinstance(m, ModulatedConv2d):
                m.memory_format = memory_format

    # -- mapping ----------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (B×512) → w (B×512): PixelNorm + n_mlp EqualLinear(lr_mul 0.01) + leaky ReLU·√2."""
        if self.shape.n_mlp == 0:
            raise ModelCorrupt("This StyleGAN2 decoder has no mapping network (style.* keys).")
        return self.style(z)

    # -- synthesis as stages -----------------------------------------------------------------
    def stages(
        self, resolution: int
    ) -> list[tuple[int, Callable[[Any, Any, torch.Tensor], tuple[Any, Any]]]]:
        """(W+ row, step) pairs up to and including the to_rgb of `resolution`.

        Each step maps `(x, skip, wplus)` to the new `(x, skip)`; x is the activation, skip the RGB image.
        """
        levels = _levels(self.shape.size, resolution)
        steps: list[tuple[int, Callable[[Any, Any, torch.Tensor], tuple[Any, Any]]]] = []

        def conv1(x: Any, skip: Any, wp: torch.Tensor) -> tuple[Any, Any]:
            out = self.input.input.expand(wp.shape[0], -1, -1, -1)
            if self.memory_format is not None:
                out = out.contiguous(memory_format=self.memory_format)
            return self.conv1(out, wp[:, 0], self.noises.get(0)), skip

        def rgb1(x: Any, skip: Any, wp: torch.Tensor) -> tuple[Any, Any]:
            return x, self.to_rgb1(x, wp[:, 1])

        steps += [(0, conv1), (1, rgb1)]
        for k in range(levels):
            steps += [
                (2 * k + 1, self._conv_step(2 * k, 2 * k + 1)),
                (2 * k + 2, self._conv_step(2 * k + 1, 2 * k + 2)),
                (2 * k + 3, self._rgb_step(k, 2 * k + 3)),
            ]
        return steps

    def _conv_step(self, j: int, row: int) -> Callable[[Any, Any, torch.Tensor], tuple[Any, Any]]:
        conv, noise = self.convs[j], self.noises.get(j + 1)
        return lambda x, skip, wp: (conv(x, wp[:, row], noise), skip)

    def _rgb_step(self, k: int, row: int) -> Callable[[Any, Any, torch.Tensor], tuple[Any, Any]]:
        to_rgb = self.to_rgbs[k]
        return lambda x, skip, wp: (x, to_rgb(x, wp[:, row], skip))

    def synthesize(self, wplus: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        """W+ (B×n_latent×style_dim) → RGB skip at `resolution` (default: the full image), not clamped."""
        x = skip = None
        for _row, step in self.stages(resolution or self.shape.size):
            x, skip = step(x, skip, wplus)
        assert skip is not None  # every level ends with its to_rgb
        return skip

    def forward(self, wplus: torch.Tensor) -> torch.Tensor:
        return self.synthesize(wplus)


class PreviewModule(nn.Module):
    """forward(wplus B×18×512) → image B×3×R×R float (not clamped); R = the chosen level."""

    def __init__(self, generator: StyleGAN2Generator, resolution: int) -> None:
        super().__init__()
        _levels(generator.shape.size, resolution)
        self.generator = generator
        self.resolution = resolution

    def forward(self, wplus: torch.Tensor) -> torch.Tensor:
        return self.generator.synthesize(wplus, self.resolution)


def _tracing() -> bool:
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


def _levels(size: int, resolution: int) -> int:
    """Number of upsampling levels up to `resolution` (8 → 1, …, 1024 → 8)."""
    if resolution < 4 or resolution > size or resolution & (resolution - 1):
        raise InvalidInput(
            f"StyleGAN2 resolution must be a power of two between 4 and {size}, got {resolution}."
        )
    return int(math.log2(resolution)) - 2


def preview_module(generator: StyleGAN2Generator, resolution: int = REDUCED_RESOLUTION) -> PreviewModule:
    """The exportable module `forward(wplus B×18×512) -> image B×3×R×R` stopping at `resolution`."""
    return PreviewModule(generator, resolution)

