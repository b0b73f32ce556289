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
    """Runs the `face_parser` component (ParseNet, on any backend) on uint8 faces.

    Args:
        runner: a `face_parser` Runner (`engine.backends`): image B×3×512×512 → logits B×19×512×512.
    """

    def __init__(self, runner) -> None:
        self.runner = runner

    def logits(self, aligned: np.ndarray):
        """ParseNet's 1×19×512×512 logits (torch, on the parser's device) of an aligned 512² RGB uint8 face.

        This is the official `parse_map`: its argmax gives the labels, and restoration takes its one-hot
        (`engine.faces.restore.parse_onehot`) from the same tensor.
        """
        import torch

        x = torch.from_numpy(parser_input(aligned))
        with torch.inference_mode():
            return self.runner(image=x)["logits"]

    def labels(self, aligned: np.ndarray) -> np.ndarray:
        """Per-pixel CelebAMask-HQ labels (512×512 int64) of an aligned 512² RGB uint8 face."""
        return self.logits(aligned)[0].argmax(dim=0).to("cpu").numpy()

    def mask(self, aligned: np.ndarray) -> np.ndarray:
        """The official removal mask (512×512 uint8, 255 = background or cloth)."""
        return removal_mask(self.labels(aligned))
