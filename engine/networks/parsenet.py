"""PSFRGAN's ParseNet (19-class face parsing) in plain PyTorch, loading `parse_multi_iter_90000.pth`.

Architecture facts (REFERENCE.md §1.3): every conv is 3×3 on a reflect-padded input; a "down" residual
block strides its second conv, an "up" block upsamples (nearest ×2) before its first conv; the shortcut
of a block that changes size or width is a single biased conv; convs followed by BatchNorm carry no
bias; LeakyReLU(0.2) follows only the first conv of each block. The body's output is added to the
encoder's output before decoding. Module names equal the checkpoint keys so it loads strictly.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 19
PARSE_SIZE = 512


class ConvLayer(nn.Module):
    """Reflect pad → conv (stride 2 for "down", nearest ×2 before it for "up") → optional BN → optional LeakyReLU."""

    def __init__(
        self, c_in: int, c_out: int, *, scale: str = "none", norm: bool = False, act: bool = False
    ) -> None:
        super().__init__()
        self.scale = scale
        self.conv2d = nn.Conv2d(c_in, c_out, 3, stride=2 if scale == "down" else 1, bias=not norm)
        if norm:
            self.norm = _Norm(c_out)
        self.has_norm = norm
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.has_norm:
            x = self.norm(x)
        if self.act:
            x = F.leaky_relu(x, 0.2)
        return x


class _Norm(nn.Module):
    """Holds the BatchNorm under the checkpoint's `norm.norm.*` key path."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResidualBlock(nn.Module):
    """conv1 (BN + LeakyReLU) → conv2 (BN), plus an identity or one-conv shortcut."""

    def __init__(self, c_in: int, c_out: int, scale: str = "none") -> None:
        super().__init__()
        self.shortcut_func: nn.Module
        if scale == "none" and c_in == c_out:
            self.shortcut_func = nn.Identity()
        else:
            self.shortcut_func = ConvLayer(c_in, c_out, scale=scale)
        first, second = {"down": ("none", "down"), "up": ("up", "none"), "none": ("none", "none")}[scale]
        self.conv1 = ConvLayer(c_in, c_out, scale=first, norm=True, act=True)
        self.conv2 = ConvLayer(c_out, c_out, scale=second, norm=True, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut_func(x) + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """ParseNet(in 512, out 512, min_feat 32, base 64, 19 classes, BN, LeakyReLU, channels clipped to [32, 256]).

    forward(x: B×3×512×512 in [-1, 1]) → (mask logits B×19×512×512, image B×3×512×512).
    """

    def __init__(
        self,
        size: int = PARSE_SIZE,
        min_feat_size: int = 32,
        base_ch: int = 64,
        num_classes: int = NUM_CLASSES,
        res_depth: int = 10,
        ch_range: tuple[int, int] = (32, 256),
    ) -> None:
        super().__init__()

        def clip(c: int) -> int:
            return max(ch_range[0], min(c, ch_range[1]))

        steps = int(math.log2(size // min(size, min_feat_size)))
        encoder: list[nn.Module] = [ConvLayer(3, base_ch)]
        head = base_ch
        for _ in range(steps):
            encoder.append(ResidualBlock(clip(head), clip(head * 2), scale="down"))
            head *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*(ResidualBlock(clip(head), clip(head)) for _ in range(res_depth)))
        decoder: list[nn.Module] = []
        for _ in range(steps):
            decoder.append(ResidualBlock(clip(head), clip(head // 2), scale="up"))
            head //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = ConvLayer(clip(head), 3)
        self.out_mask_conv = ConvLayer(clip(head), num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.encoder(x)
        return self.decoder(feat + self.body(feat))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.out_mask_conv(h), self.out_img_conv(h)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Only the 19-class logits (skips the unused image head)."""
        return self.out_mask_conv(self.features(x))


def parsenet_layout() -> dict[str, tuple[int, ...]]:
    """Key → shape of `parse_multi_iter_90000.pth` (238 tensors), computed without allocating weights."""
    with torch.device("meta"):
        model = ParseNet()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_parsenet(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ParseNet:
    """Build ParseNet from `parse_multi_iter_90000.pth` (or its `.safetensors` conversion).

    Args:
        path: the checkpoint (a plain state dict, optionally wrapped as {"state_dict": …}).
        device: where the module lives.
        dtype: floating dtype of its parameters.

    Returns:
        The network in eval mode (BatchNorm uses its running statistics).

    Raises:
        ModelMissing, UnsafeCheckpoint: as `engine.models.safe_load.load_state`.
        ModelCorrupt: damaged file or not the ParseNet layout (the message names the first bad key).
    """
    from engine.models.safe_load import check_layout, load_state

    state = load_state(path)
    if set(state) == {"state_dict"} and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    check_layout(state, parsenet_layout(), path, "ParseNet face parser (PSFRGAN parse_multi_iter_90000)")
    with torch.device("meta"):
        model = ParseNet()
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()
