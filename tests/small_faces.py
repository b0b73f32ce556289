"""Small real stand-ins for e4e and ParseNet, shared by the face-chain, restoration, dataset and backend tests.

Rule weights (`engine.testing.wbn`), so every test that builds them with the same tag gets the same
numbers. The fixtures that hand them to the unit tests are in `tests/unit/conftest.py`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.networks.parsenet import ParseNet
from engine.testing.wbn import fill_module


class SmallEncoder(nn.Module):
    """A small real encoder with e4e's interface: B×3×256×256 in [-1, 1] → W+ B×18×512 (codes + latent_avg).

    The real E4EEncoder has a fixed 1 GB architecture; this one has the same IO, conv/pool/linear ops and
    a latent_avg buffer. With `record`, `inputs` keeps every input it was given (the tests check what the
    chain fed e4e); an encoder to export to ONNX must not record.
    """

    def __init__(self, record: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(8 * 16, 18 * 512)
        self.register_buffer("latent_avg", torch.zeros(18, 512))
        self.record = record
        self.inputs: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record:
            self.inputs.append(x.detach().numpy().copy())
        h = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.head(h).view(-1, 18, 512) + self.latent_avg


def small_encoder(tag: str = "test:small_e4e.", *, record: bool = True) -> SmallEncoder:
    """A SmallEncoder with the rule weights of `tag`, in eval mode."""
    enc = SmallEncoder(record)
    fill_module(enc, tag)
    return enc.eval()


def small_parsenet(tag: str = "test:small_parsenet.") -> ParseNet:
    """ParseNet at the real 512² input with 4–8 channels and one residual block (rule weights of `tag`)."""
    net = ParseNet(size=512, min_feat_size=128, base_ch=4, res_depth=1, ch_range=(4, 8))
    fill_module(net, tag)
    return net.eval()
