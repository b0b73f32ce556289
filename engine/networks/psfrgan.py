"""PSFRGAN's restoration generator (the official `ProcessWildImage.py -s` path) in plain PyTorch.

Loads `psfrgan_epoch15_net_G.pth` (a plain state dict, 111 tensors, 45,956,995 parameters) or its
safetensors conversion. Architecture facts (PSFRGAN.md §2): a learnt 1024×16×16 constant is decoded
to 512² by a head and five ×2 stages; the face and its one-hot parse map enter only through SPADE
normalisations (instance norm, then `n·gamma + beta` predicted from the 22-channel reference, which is
bicubic-resized to every level below 512). No output activation: values leave [-1, 1] and the caller's
`tensor2pil` clips. Module names equal the checkpoint keys so it loads strictly.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

PSFR_SIZE = 512
PARSE_CHANNELS = 19
PARAMS = 45_956_995
LAYOUT_NAME = "PSFRGAN restoration generator (psfrgan_epoch15_net_G)"


class SPADENorm(nn.Module):
    """InstanceNorm (instance statistics, also in eval) modulated by convs of the reference."""

    def __init__(self, norm_nc: int, ref_nc: int, hidden: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(ref_nc, hidden, 3, padding=1), nn.LeakyReLU(0.2))
        self.gamma_conv = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.beta_conv = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        n = F.instance_norm(x, eps=1e-5)
        if x.shape[-1] != ref.shape[-1]:
            # official: bicubic without antialias, so the one-hot map over/undershoots below 512
            ref = F.interpolate(ref, size=x.shape[2:], mode="bicubic", align_corners=False)
        a = self.conv1(ref)
        return n * self.gamma_conv(a) + self.beta_conv(a)


class SPADEResBlock(nn.Module):
    """x + conv_1(act(norm_1(conv_0(act(norm_0(x, ref))), ref)))."""

    def __init__(self, fin: int, fout: int, ref_nc: int, hidden: int = 64) -> None:
        super().__init__()
        mid = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, mid, 3, padding=1)
        self.conv_1 = nn.Conv2d(mid, fout, 3, padding=1)
        self.norm_0 = SPADENorm(mid, ref_nc, hidden)
        self.norm_1 = SPADENorm(mid, ref_nc, hidden)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        res = self.conv_0(F.leaky_relu(self.norm_0(x, ref), 0.2))
        res = self.conv_1(F.leaky_relu(self.norm_1(res, ref), 0.2))
        return x + res


class PSFRGenerator(nn.Module):
    """PSFRGenerator(out 512, min_feat 16, 19 parse channels, SPADE, LeakyReLU, channels clipped to [32, 1024]).

    forward(image: B×3×S×S in [-1, 1], parse_onehot: B×19×S×S) → B×3×S×S, unbounded.
    `size`, `min_feat_size`, `ch_range` and `spade_hidden` only shrink it for tests.
    """

    def __init__(
        self,
        size: int = PSFR_SIZE,
        min_feat_size: int = 16,
        parse_ch: int = PARSE_CHANNELS,
        ch_range: tuple[int, int] = (32, 1024),
        spade_hidden: int = 64,
    ) -> None:
        super().__init__()

        def clip(c: int) -> int:
            return max(ch_range[0], min(c, ch_range[1]))

        self.size = size
        ref_nc = 3 + parse_ch
        head_ch = 1024
        self.const_input = nn.Parameter(torch.zeros(1, clip(head_ch), min_feat_size, min_feat_size))
        self.head = nn.Sequential(
            nn.Conv2d(clip(head_ch), clip(head_ch), 3, padding=1),
            SPADEResBlock(clip(head_ch), clip(head_ch), ref_nc, spade_hidden),
        )
        stages: list[nn.Module] = []
        for _ in range(int(math.log2(size // min_feat_size))):
            cin, cout = clip(head_ch), clip(head_ch // 2)
            stages.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(cin, cout, 3, padding=1),
                    SPADEResBlock(cout, cout, ref_nc, spade_hidden),
                )
            )
            head_ch //= 2
        self.body = nn.Sequential(*stages)
        self.img_out = nn.Conv2d(clip(head_ch), 3, 3, padding=1)

    @staticmethod
    def _run(seq: nn.Module, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        for m in seq.children():
            x = m(x, ref) if isinstance(m, SPADEResBlock) else m(x)
        return x

    def forward(self, image: torch.Tensor, parse_onehot: torch.Tensor) -> torch.Tensor:
        ref = torch.cat((image, parse_onehot), dim=1)
        feat = self.const_input.expand(image.shape[0], -1, -1, -1)
        feat = self._run(self.head, feat, ref)
        for stage in self.body:
            feat = self._run(stage, feat, ref)
        return self.img_out(feat)


def psfrgan_layout() -> dict[str, tuple[int, ...]]:
    """Key → shape of `psfrgan_epoch15_net_G.pth` (111 tensors), computed without allocating weights."""
    with torch.device("meta"):
        model = PSFRGenerator()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_psfrgan(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> PSFRGenerator:
    """Build the generator from `psfrgan_epoch15_net_G.pth` (or its `.safetensors` conversion).

    Args:
        path: the checkpoint (a plain state dict, optionally wrapped as {"state_dict": …}).
        device: where the module lives.
        dtype: floating dtype of its parameters.

    Returns:
        The network in eval mode.

    Raises:
        ModelMissing, UnsafeCheckpoint: as `engine.models.safe_load.load_state`.
        ModelCorrupt: damaged file or not the generator's layout (the message names the first bad key).
    """
    from engine.models.safe_load import check_layout, load_state

    state = load_state(path)
    if set(state) == {"state_dict"} and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    check_layout(state, psfrgan_layout(), path, LAYOUT_NAME)
    with torch.device("meta"):
        model = PSFRGenerator()
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()
