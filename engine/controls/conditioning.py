"""Control images → ControlNet conditioning tensors, exactly as diffusers' ControlNet pipeline prepares them.

diffusers' `StableDiffusionControlNetPipeline` runs the control image through
`VaeImageProcessor(do_convert_rgb=True, do_normalize=False)`: Lanczos resize to the output width × height,
RGB in [0, 1] (not [-1, 1]), float32, one copy per batch row (uncond and cond with CFG).

One deliberate choice where diffusers' default would distort: a control image of another aspect ratio is
**scaled to cover the output and centre-cropped** (diffusers' `resize_mode="crop"`), never stretched, so a
pose drawn on a square canvas keeps its proportions in a portrait render. With the same aspect ratio this
is exactly diffusers' default resize (a test checks both).
"""

from __future__ import annotations

import numpy as np


def control_tensor(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The conditioning image for one ControlNet: float32 1×3×height×width in [0, 1].

    Args:
        image: uint8 H×W×3 RGB (a `ControlSpec.image`).
        width, height: the output size in pixels.
    """
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    proc = VaeImageProcessor(do_convert_rgb=True, do_normalize=False)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    h, w = image.shape[:2]
    mode = "default" if h * width == w * height else "crop"
    out = proc.preprocess(pil, height=height, width=width, resize_mode=mode)
    return out.float().numpy()


def control_active(step: int, steps: int, start: float, end: float) -> bool:
    """Whether a ControlNet acts at `step` of `steps`: diffusers' `control_guidance_start/end` rule.

    diffusers keeps the ControlNet at step i unless i/steps < start or (i+1)/steps > end.
    """
    return not (step / steps < start or (step + 1) / steps > end)
