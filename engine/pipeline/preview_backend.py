"""The StyleGAN2 face preview on the selected backend.

The exported `stylegan_preview` component is the reduced path (the generator stopped at its 256²
level, the preview shown while sliders move). On ONNX Runtime or TensorRT that path runs from the
export; the other sizes (64, 128, the full 1024² image and its resizes) are not exported and run on
the torch generator, loaded on first need. On torch the whole preview is
`engine.pipeline.face_preview.StyleGANPreview` (with its stage cache), loaded by the model service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.backends.base import Runner
from engine.errors import InvalidInput, ModelMissing

log = logging.getLogger(__name__)

COMPONENT = "stylegan_preview"


def runner_resolution(runner: Runner) -> int:
    """The side R of the images a `stylegan_preview` runner returns (fixed in its export's profile).

    Raises:
        InvalidInput: the runner's profile does not fix R (an export made by another tool).
    """
    profile = getattr(runner, "profile", None)
    rng = profile.range("R") if profile is not None else None
    if rng is None or not rng.fixed:
        raise InvalidInput("The StyleGAN2 preview export does not record its resolution.",
                           "Export it again: python -m export onnx --components stylegan_preview …")
    return rng.min


class RunnerPreview:
    """`render()` like `StyleGANPreview`, with the exported level on a runner and the rest on torch.

    Args:
        runner: the `stylegan_preview` runner (ONNX Runtime or TensorRT).
        torch_preview: builds the torch `StyleGANPreview` for the sizes the export does not cover.
        backend: the runner's backend name, for messages.
    """

    def __init__(self, runner: Runner, torch_preview: Callable[[], Any], backend: str = "") -> None:
        self.runner = runner
        self.resolution = runner_resolution(runner)
        self.backend = backend or runner.backend
        self._torch_preview = torch_preview
        self._torch: Any = None
        self._lock = threading.Lock()

    def render(self, wplus: np.ndarray, size: int = 256, *, full: bool = False) -> np.ndarray:
        """Render one W+ (1×18×512) as size×size×3 uint8 RGB; see `StyleGANPreview.render`.

        Raises:
            InvalidInput: wrong shape, NaN/Inf, or a size not in PREVIEW_SIZES.
        """
        import torch

        from engine.api import validate_wplus
        from engine.pipeline.face_preview import PREVIEW_SIZES, to_uint8

        if size not in PREVIEW_SIZES:
            raise InvalidInput(
                f"The preview size must be one of {', '.join(map(str, PREVIEW_SIZES))}, got {size}."
            )
        if size != self.resolution or full:
            return self.torch_preview().render(wplus, size, full=full)
        w = validate_wplus(wplus)
        with self._lock, torch.inference_mode():
            image = self.runner(wplus=torch.from_numpy(w))["image"]
        return to_uint8(image[0].to("cpu", torch.float32).numpy())

    def torch_preview(self) -> Any:
        """The torch preview for the sizes the export does not cover (loaded on first use)."""
        with self._lock:
            if self._torch is None:
                log.info("preview sizes other than %d run on torch (the %s export covers %d² only)",
                         self.resolution, self.backend, self.resolution)
                try:
                    self._torch = self._torch_preview()
                except ModelMissing as exc:
                    raise ModelMissing(
                        f"{exc.user_message} The {self.backend} export covers the {self.resolution}² preview only; "
                        "other sizes and the exact reconstruction need the generator in the e4e file.",
                        exc.hint,
                    ) from None
            return self._torch


def open_preview(config: Any, torch_preview: Callable[[], Any], *, report: Any = None) -> tuple[Any, Any]:
    """The preview of the configured backend, and the backend choice (with any fallback reason).

    Args:
        config: an EngineConfig (backend, device, models folder).
        torch_preview: loads the torch `StyleGANPreview` (the model service's "stylegan_preview"); called
            at once on torch, and on first need on the other backends (sizes the export does not cover).
        report: a `select.probe()` result (probed now if None).

    Returns:
        (an object with `render(wplus, size, full=...)`, the `BackendChoice`).

    Raises:
        ModelMissing, ModelCorrupt: from `torch_preview` (torch, or sizes not exported).
    """
    from engine.backends.select import open_runners
    from engine.backends.torch_backend import TorchModuleRunners

    # The torch side is the whole StyleGANPreview, not a runner: nothing to build for open_runners.
    runners, choice = open_runners(config, lambda: TorchModuleRunners({}), report=report, components=(COMPONENT,))
    if choice.fallback_reasons:
        log.info("preview backend: %s", choice.message)  # the caller shows it (CLI line, app banner)
    if choice.backend == "torch":
        return torch_preview(), choice
    return RunnerPreview(runners.get(COMPONENT), torch_preview, choice.backend), choice
