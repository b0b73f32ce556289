"""Background whitening (REFERENCE.md §1.3): ParseNet labels → the official "remove" mask.

The official step 2 runs ParseNet on the aligned 512² face (ToTensor + Normalize(0.5, 0.5), i.e.
x/255·2−1), takes the per-pixel argmax of the 19 logits and marks background (0) and cloth (18) as
255. The mask then goes to `engine.faces.preprocess.e4e_input`.
"""

from __future__ import annotations

import numpy as np

from engine.errors import InvalidInput
from engine.faces.preprocess import ALIGNED_SIZE, removal_mask


def parser_input(aligned: np.ndarray) -> np.ndarray:
    """The official step-2 tensor of a face: bilinear resize to 512² (a no-op for aligned faces),
    ToTensor + Normalize(0.5, 0.5) → 1×3×512×512 float32 in [-1, 1]. ParseNet and PSFRGAN both read it."""
    from PIL import Image

    arr = np.asarray(aligned)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInput(f"face parsing needs an H×W×3 uint8 RGB face, got {arr.dtype} {arr.shape}.")
    if arr.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
        arr = np.asarray(
            Image.fromarray(np.ascontiguousarray(arr), "RGB").resize(
                (ALIGNED_SIZE, ALIGNED_SIZE), Image.Resampling.BILINEAR
            )
        )
    x = arr.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((x - np.float32(0.5)) / np.float32(0.5))[None])


class FaceParser:
    """Wraps a loaded ParseNet module (engine.networks.parsenet) for uint8 faces.

    Args:
        net: a ParseNet in eval mode.
    """

    def __init__(self, net) -> None:
        self.net = net

    @classmethod
    def load(cls, path, device: str = "cpu") -> FaceParser:
        """Load `parse_multi_iter_90000.pth` (or .safetensors) through the safe loader.

        Raises:
            ModelMissing, ModelCorrupt, UnsafeCheckpoint: see engine.networks.parsenet.load_parsenet.
        """
        from engine.networks.parsenet import load_parsenet

        return cls(load_parsenet(path, device=device))

    def logits(self, aligned: np.ndarray):
        """ParseNet's 1×19×512×512 logits (torch, on the parser's device) of an aligned 512² RGB uint8 face.

        This is the official `parse_map`: its argmax gives the labels, and restoration takes its one-hot
        (`engine.faces.restore.parse_onehot`) from the same tensor.
        """
        import torch

        param = next(self.net.parameters())
        x = torch.from_numpy(parser_input(aligned)).to(device=param.device, dtype=param.dtype)
        with torch.inference_mode():
            return self.net.logits(x)

    def labels(self, aligned: np.ndarray) -> np.ndarray:
        """Per-pixel CelebAMask-HQ labels (512×512 int64) of an aligned 512² RGB uint8 face."""
        return self.logits(aligned)[0].argmax(dim=0).to("cpu").numpy()

    def mask(self, aligned: np.ndarray) -> np.ndarray:
        """The official removal mask (512×512 uint8, 255 = background or cloth)."""
        return removal_mask(self.labels(aligned))
