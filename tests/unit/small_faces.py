"""Small real stand-ins for e4e and ParseNet, shared by the face-chain, restoration and dataset tests.

Rule weights (`engine.testing.wbn`), so every test that builds them gets the same numbers. The fixtures
that hand them to the unit tests are in `tests/unit/conftest.py`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.networks.parsenet import ParseNet
from engine.testing.wbn import fill_module


class SmallEncoder(nn.Module):
    """A small real encoder with e4e's interface: 1×3×256×256 in [-1, 1] → W+ 1×18×512 (+ latent_avg).

    `inputs` records every input it was given (the tests check what the chain fed e4e).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(8 * 16, 18 * 512)
        self.register_buffer("latent_avg", torch.zeros(18, 512))
        self.inputs: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().numpy().copy())
        h = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.head(h).view(-1, 18, 512) + self.latent_avg


def small_encoder() -> SmallEncoder:
    """The SmallEncoder with the shared rule weights, in eval mode."""
    enc = SmallEncoder()
    fill_module(enc, "test:small_e4e.")
    return enc.eval()


def small_parsenet() -> ParseNet:
    """ParseNet at the real 512² input with 4–8 channels and one residual block (shared rule weights)."""
    net = ParseNet(size=512, min_feat_size=128, base_ch=4, res_depth=1, ch_range=(4, 8))
    fill_module(net, "test:small_parsenet.")
    return net.eval()
