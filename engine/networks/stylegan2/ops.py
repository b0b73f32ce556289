"""The two custom ops of StyleGAN2 (STYLEGAN2.md §3) in plain torch: no compiled CUDA kernels.

The official port compiles `upfirdn2d` and `fused_bias_act` at import; here both are ordinary torch ops,
so the generator runs on any device and exports to ONNX/TensorRT unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

LRELU_GAIN = math.sqrt(2.0)



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
    x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2, scale: float = LRELU_GAIN
) -> torch.Tensor:
    """`leaky_relu(x + bias, slope) · scale`, bias broadcast along dimension 1 (STYLEGAN2.md §3.2)."""
    if bias is not None:
        x = x + bias.reshape((1, -1) + (1,) * (x.ndim - 2))
    return F.leaky_relu(x, negative_slope) * scale


def fir_kernel() -> np.ndarray:
    """The 4×4 FIR K of every upsampling: outer([1,3,3,1], [1,3,3,1]) / 16 (sums to 4 = factor²)."""
    k = np.array([1.0, 3.0, 3.0, 1.0])
    return np.outer(k, k) / 16.0

