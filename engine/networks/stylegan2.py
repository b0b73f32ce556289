"""StyleGAN2-FFHQ-1024 generator of `e4e_ffhq_encode.pt` in plain PyTorch: the instant W+ face preview.

The e4e checkpoint carries the generator whose W+ space the encoder targets (`decoder.*` keys).
Rendering an (edited) W+ through it gives the e4e reconstruction right after capture and a face preview
of every slider position long before Stable Diffusion finishes.

Semantics: `/work/shared/spec/STYLEGAN2.md` (rosinality's port as used by e4e), called as
`decoder([W], input_is_latent=True, randomize_noise=False)`:

- no compiled ops: `upfirdn2d` and the fused bias + leaky ReLU are written with ordinary torch ops;
- *activation modulation*: a styled conv scales the input activations by the style and the output
  channels by the demodulation factor instead of building per-sample weights, so the conv weights
  are static (batch-friendly, ONNX/TensorRT-friendly); exact up to float rounding;
- the noise images are the checkpoint's stored buffers (never redrawn), so the preview is stable;
- two output paths: the full 1024² image, and a cheaper *reduced* path that stops after the 256²
  level and returns that level's RGB skip. The reduced image is a coarse preview, not a downscaled
  full image (the 512²/1024² to_rgb layers still add colour and detail).

Parameter and buffer names equal the official ones, so the checkpoint's `decoder.*` entries (prefix
stripped) load strictly.
"""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InvalidInput, ModelCorrupt, ModelMissing

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
PREVIEW_SIZES = (64, 128, 256, 512, 1024)  # ≤ 256: reduced paths (that level's RGB skip)
_LRELU_GAIN = math.sqrt(2.0)
_DISABLED = "preview disabled: "
_REDOWNLOAD_HINT = "Download e4e_ffhq_encode.pt again or re-import it (`wplus models`)."


# ---------------------------------------------------------------------------------------------------
# The two custom ops (STYLEGAN2.md §3), plain torch
# ---------------------------------------------------------------------------------------------------


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    pad: Sequence[int] = (0, 0),
) -> torch.Tensor:
    """Upsample by zero insertion, pad (or crop), convolve with a FIR kernel, decimate (STYLEGAN2.md §3.1).

    Args:
        x: N×C×H×W.
        kernel: kh×kw, applied to every channel (depthwise) as a true convolution (flipped), no
            normalisation inside the op.
        up: zero-insertion factor, an int or an (x, y) pair.
        down: decimation factor, an int or an (x, y) pair (keeps samples 0, down, 2·down, …).
        pad: `(p0, p1)` = `(pad_x0, pad_x1, pad_y0, pad_y1) = (p0, p1, p0, p1)`, or that 4-tuple;
            a negative amount crops that side.

    Returns:
        N×C×out_h×out_w with `out_h = (H·up_y + pad_y0 + pad_y1 − kh) // down_y + 1` (same for width).
    """
    up_x, up_y = _pair(up)
    down_x, down_y = _pair(down)
    if len(pad) == 2:
        px0, px1 = int(pad[0]), int(pad[1])
        py0, py1 = px0, px1
    elif len(pad) == 4:
        px0, px1, py0, py1 = (int(p) for p in pad)
    else:
        raise ValueError(f"pad must have 2 or 4 entries, got {len(pad)}")
    n, c, h, w = x.shape
    if up_x > 1 or up_y > 1:
        # The up−1 zeros after the last sample are kept (they matter for the output size and phase).
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up_x - 1, 0, 0, 0, up_y - 1])
        x = x.reshape(n, c, h * up_y, w * up_x)
    conv_pad = (0, 0)
    if px0 == px1 >= 0 and py0 == py1 >= 0:
        conv_pad = (py0, px0)  # zero padding done by the conv itself: saves a copy (the blur case)
    else:
        if max(px0, px1, py0, py1) > 0:
            x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
        if min(px0, px1, py0, py1) < 0:
            x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(dtype=x.dtype, device=x.device).reshape(1, 1, kh, kw)
    x = F.conv2d(x, weight.expand(c, 1, kh, kw), padding=conv_pad, groups=c)
    if down_x > 1 or down_y > 1:
        x = x[:, :, ::down_y, ::down_x]
    return x


def fused_leaky_relu(
    x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2, scale: float = _LRELU_GAIN
) -> torch.Tensor:
    """`leaky_relu(x + bias, slope) · scale`, bias broadcast along dimension 1 (STYLEGAN2.md §3.2)."""
    if bias is not None:
        x = x + bias.reshape((1, -1) + (1,) * (x.ndim - 2))
    return F.leaky_relu(x, negative_slope) * scale


def fir_kernel() -> np.ndarray:
    """The 4×4 FIR K of every upsampling: outer([1,3,3,1], [1,3,3,1]) / 16 (sums to 4 = factor²)."""
    k = np.array([1.0, 3.0, 3.0, 1.0])
    return np.outer(k, k) / 16.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Official `tensor2pil` conversion of one C×H×W float image: clip, (x+1)/2·255, truncate → H×W×3 uint8."""
    arr = np.asarray(image, dtype=np.float32).transpose(1, 2, 0).copy()
    np.clip(arr, -1.0, 1.0, out=arr)
    arr = (arr + 1) / 2
    arr = arr * 255
    return arr.astype(np.uint8)


def resize_like_official(rgb: np.ndarray, size: int) -> np.ndarray:
    """PIL `.resize((size, size))` with Pillow's default filter (BICUBIC, antialiased when shrinking)."""
    from PIL import Image

    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))


# ---------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------


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

    def __init__(self, pad: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.from_numpy(fir_kernel()).float())
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2× FIR upsampling of the RGB skip (`…upsample.kernel`): zero border, not bilinear."""

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
        g = _LRELU_GAIN
        out = torch.addcmul(
            (self.noise.weight * g) * noise, y, (d * g)[:, :, None, None] if d is not None else g
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


def infer_shape(state: Mapping[str, Any]) -> GeneratorShape:
    """Architecture of a decoder state dict (keys without `decoder.`): size, widths, mapping depth.

    Raises:
        ModelCorrupt: when the keys do not describe a StyleGAN2 generator.
    """
    try:
        num_layers = len([k for k in state if k.startswith("noises.noise_")])
        if num_layers < 1 or num_layers % 2 == 0:
            raise KeyError("noises.noise_*")
        log_size = (num_layers - 1) // 2 + 2
        style_dim = int(state["conv1.conv.modulation.weight"].shape[1])
        chans = {4: int(state["input.input"].shape[1])}
        for i in range(3, log_size + 1):
            chans[2**i] = int(state[f"convs.{2 * (i - 3)}.conv.weight"].shape[1])
        n_mlp = len([k for k in state if k.startswith("style.") and k.endswith(".weight")])
    except (KeyError, IndexError, AttributeError) as exc:
        raise ModelCorrupt(
            f"{_DISABLED}the StyleGAN2 decoder in the e4e checkpoint is incomplete (missing {exc}).",
            _REDOWNLOAD_HINT,
        ) from exc
    return GeneratorShape(
        size=2**log_size, style_dim=style_dim, n_mlp=n_mlp, channels=tuple(sorted(chans.items()))
    )


def generator_from_state(state: Mapping[str, Any]) -> StyleGAN2Generator:
    """Build the generator matching `state` (decoder keys, prefix stripped) and load it strictly.

    Args:
        state: tensor (or numpy array) per key, e.g. `load_e4e_checkpoint(path).decoder_state`.

    Returns:
        The generator in eval mode, float32, requires_grad off.

    Raises:
        ModelMissing: `state` is empty (a checkpoint without the StyleGAN2 decoder); the message
            starts with "preview disabled:".
        ModelCorrupt: missing/unexpected keys or wrong shapes ("preview disabled: …" too).
    """
    if not state:
        raise ModelMissing(
            f"{_DISABLED}the e4e checkpoint has no StyleGAN2 decoder (no `decoder.*` keys).",
            "Use the official e4e_ffhq_encode.pt, which carries the decoder, for the face preview; "
            "encoding and generation work without it.",
        )
    tensors = {
        k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))).to(torch.float32)
        for k, v in state.items()
    }
    generator = StyleGAN2Generator(infer_shape(tensors))
    try:
        generator.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
        raise ModelCorrupt(
            f"{_DISABLED}the StyleGAN2 decoder in the e4e checkpoint does not fit the generator layout "
            f"({detail[:300]}).",
            _REDOWNLOAD_HINT,
        ) from exc
    if not all(torch.isfinite(v).all() for v in tensors.values()):
        raise ModelCorrupt(
            f"{_DISABLED}the StyleGAN2 decoder holds NaN or infinite weights.", _REDOWNLOAD_HINT
        )
    generator.eval().requires_grad_(False)
    return generator


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
                    verbose=False,
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


# ---------------------------------------------------------------------------------------------------
# Engine-facing preview
# ---------------------------------------------------------------------------------------------------


def validate_wplus_for(generator: StyleGAN2Generator, wplus: np.ndarray) -> np.ndarray:
    """`engine.api.validate_wplus` (1×18×512, finite) for the official generator; the generator's
    own 1×n_latent×style_dim for reduced test generators. Raises InvalidInput."""
    from engine.api import WPLUS_SHAPE, validate_wplus

    shape = (1, generator.n_latent, generator.shape.style_dim)
    if shape == WPLUS_SHAPE:
        return validate_wplus(wplus)
    arr = np.asarray(wplus)
    if arr.shape == shape[1:]:
        arr = arr[None]
    if arr.shape != shape or not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise InvalidInput(f"W+ must be a finite float array of shape {shape}, got {arr.shape}.")
    return np.ascontiguousarray(arr, dtype=np.float32)


@dataclass
class _StageCache:
    """States `(x, skip)` after each stage of the last render at one resolution, and its W+."""

    resolution: int
    wplus: np.ndarray
    states: list[tuple[Any, Any]]


class StyleGANPreview:
    """Renders W+ codes with the e4e checkpoint's StyleGAN2 generator (stored noise, no randomness).

    `render(w, 256)` runs the reduced path: it stops after the 256² level and returns that level's RGB
    skip — a cheaper, coarser preview for slider dragging (≈1/5 of the full image's CPU time, though
    60 % of its multiply-adds; the 512²/1024² to_rgb layers that would still add colour and detail are
    skipped; 64 and 128 stop earlier still). 512/1024 run the full 1024² generator and resize like the
    official preview post-processing; `render(w, 256, full=True)` is the official 256² reconstruction
    preview.

    Consecutive reduced-path renders reuse the stages before the first W+ row that changed (exact:
    STYLEGAN2.md §2.1; it holds ≈130 MB of activations, so the full path is not cached). Real edits touch
    rows 0–7 or all 18 rows, so this pays off only for edits of the later rows.

    Thread-safe (one render at a time).
    """

    def __init__(
        self,
        generator: StyleGAN2Generator,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        channels_last: bool | None = None,
        cache: bool = True,
    ) -> None:
        """
        Args:
            generator: a loaded generator (`generator_from_state`).
            device: torch device string.
            dtype: "float32" (faithful, the default) or "bfloat16" (CPU draft mode, ≈2× faster on CPUs
                with AVX512-BF16, up to ~10 grey levels off).
            channels_last: NHWC convs (faster with oneDNN; default on for CPU). Changes results only by
                float rounding (~1e-5).
            cache: keep per-stage activations of the reduced path between renders.
        """
        if dtype not in ("float32", "bfloat16"):
            raise InvalidInput(f"StyleGAN preview dtype must be float32 or bfloat16, got {dtype!r}.")
        self.dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        self.generator = generator.to(device=self.device, dtype=self.dtype)
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.generator.set_memory_format(torch.channels_last if channels_last else None)
        self.cache_enabled = cache
        self._lock = threading.Lock()
        self._cache: _StageCache | None = None

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> StyleGANPreview:
        """Load from an e4e checkpoint (`.pt` or its safetensors conversion) via `load_e4e_checkpoint`.

        The engine gets the preview through the model service (`ModelService.load("stylegan_preview")`),
        which finds the e4e file and converts a pickle first.

        Only the `decoder.*` tensors and `latent_avg` are loaded (a decoder-only file is enough).

        Args:
            path: the e4e file.
            **kwargs: passed to the constructor (device, dtype, channels_last, cache).

        Raises:
            ModelMissing: no file, or a file without `decoder.*` keys (message "preview disabled: …").
            ModelCorrupt: damaged file, or decoder keys/shapes that do not fit ("preview disabled: …").
            UnsafeCheckpoint: a pickle that would run code.
        """
        from engine.networks.e4e import load_e4e_checkpoint

        p = Path(path)
        if not p.is_file():
            raise ModelMissing(
                f"{_DISABLED}the e4e checkpoint {p} was not found.",
                "Put e4e_ffhq_encode.pt into the models folder (`wplus models list` shows where).",
            )
        # only the decoder: the 1.07 GB encoder is neither read (safetensors, zip pickles) nor kept
        ckpt = load_e4e_checkpoint(p, parts=("decoder",))
        return cls.from_state_dict(ckpt.decoder_state, **kwargs)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], **kwargs: Any) -> StyleGANPreview:
        """Build from decoder tensors (keys without `decoder.`). Raises as `generator_from_state`."""
        return cls(generator_from_state(state), **kwargs)

    # -- modules -----------------------------------------------------------------------------------
    @property
    def module(self) -> PreviewModule:
        """The reduced-path module for ONNX export: forward(wplus B×18×512) -> image B×3×256×256 float."""
        return preview_module(self.generator, min(REDUCED_RESOLUTION, self.generator.shape.size))

    def module_at(self, resolution: int) -> PreviewModule:
        """The module that stops at `resolution` (a power of two; the generator size = the full image)."""
        return preview_module(self.generator, resolution)

    # -- rendering ---------------------------------------------------------------------------------
    def render_float(self, wplus: np.ndarray, resolution: int) -> np.ndarray:
        """The RGB skip at `resolution` (the full image at the generator size): float32 3×R×R, not clamped.

        Raises:
            InvalidInput: wrong shape, NaN/Inf, or a resolution that is not a level of the generator.
        """
        w = validate_wplus_for(self.generator, wplus)
        stages = self.generator.stages(resolution)
        keep = self.cache_enabled and resolution <= REDUCED_RESOLUTION
        with self._lock, torch.inference_mode():
            start = 0
            cache = self._cache
            if keep and cache is not None and cache.resolution == resolution:
                changed = np.flatnonzero((cache.wplus[0] != w[0]).any(axis=-1))
                first_row = int(changed[0]) if changed.size else self.generator.n_latent
                # rows never decrease along the stages: everything before the first reader of a
                # changed row saw identical inputs
                start = next((i for i, (row, _) in enumerate(stages) if row >= first_row), len(stages))
            states = cache.states[:start] if start else []
            x, skip = states[-1] if states else (None, None)
            wt = torch.from_numpy(w).to(device=self.device, dtype=self.dtype)
            for _row, step in stages[start:]:
                x, skip = step(x, skip, wt)
                if keep:
                    states.append((x, skip))
            self._cache = _StageCache(resolution, w.copy(), states) if keep else None
            return skip[0].to(device="cpu", dtype=torch.float32).numpy()

    def render(self, wplus: np.ndarray, size: int = 256, *, full: bool = False) -> np.ndarray:
        """Render one W+ as an RGB uint8 image of size×size×3.

        Args:
            wplus: 1×18×512 (or 18×512) float, e.g. an identity's edited W+.
            size: 256 → the reduced path (the 256² level's RGB skip, no resize); 64 or 128 → the
                coarser levels' skips (cheaper still, blurrier); 512 or 1024 → the full 1024² image,
                resized with PIL bicubic like the official preview.
            full: with a size ≤ 256, render the full image and resize it instead (for 256: the
                official reconstruction preview, ≈5× the CPU time of the reduced path).

        Returns:
            uint8 size×size×3 RGB (official conversion: clip to [−1, 1], (x+1)/2·255, truncation).

        Raises:
            InvalidInput: wrong shape, NaN/Inf, or a size not in PREVIEW_SIZES.
        """
        if size not in PREVIEW_SIZES:
            raise InvalidInput(
                f"The preview size must be one of {', '.join(map(str, PREVIEW_SIZES))}, got {size}."
            )
        full_res = self.generator.shape.size
        if size <= REDUCED_RESOLUTION and not full:
            return to_uint8(self.render_float(wplus, min(size, full_res)))
        return resize_like_official(to_uint8(self.render_float(wplus, full_res)), size)

    def clear_cache(self) -> None:
        """Drop the cached activations (memory)."""
        with self._lock:
            self._cache = None
