"""The engine facade: one object that the CLI and the desktop bridge drive.

It only composes: models are located, converted, loaded and cached by its `ModelService`
(`engine.models.service`), and each call delegates to the module that owns the work (faces, edits,
pipeline, preview).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.api import (
    BurstResult,
    EditState,
    GenerateRequest,
    Identity,
    ModelState,
    Progress,
    Result,
    SliderSpec,
)
from engine.config import EngineConfig
from engine.models.service import ModelService

ProgressFn = Callable[[Progress], None] | None


class Session:
    """Implements `engine.api.EngineSession` on the configured backend."""

    def __init__(self, config: EngineConfig, models: ModelService | None = None) -> None:
        self.config = config
        self.models = models or ModelService(config)

    # -- models ---------------------------------------------------------------------------------
    def model_states(
        self, *, verify: bool = False, token: Any = None, progress: ProgressFn = None
    ) -> tuple[ModelState, ...]:
        """Check the models folder (see `engine.models.verify.check_models`).

        Args:
            verify: hash files not hashed before (reads every new file once: seconds per GB). The
                default only looks at presence, size and structure, so opening a session stays instant.
            token: CancelToken checked while hashing.
            progress: receives Progress(stage, bytes done, file size) while hashing.

        Raises:
            Cancelled: the token was set while hashing.
        """
        from engine.models.verify import check_models

        return check_models(self.config, manifest=self.models.manifest, verify=verify, progress=progress,
                            token=token)

    # -- edits ----------------------------------------------------------------------------------
    def _directions(self):
        from engine.edits.directions import DirectionLibrary

        return self.models.get(("directions",), DirectionLibrary.load_default)

    def catalog(self) -> tuple[SliderSpec, ...]:
        return self._directions().catalog

    def apply_edits(self, wplus: np.ndarray, edits: EditState) -> np.ndarray:
        return self._directions().apply(wplus, edits)

    # -- faces ----------------------------------------------------------------------------------
    def _face_chain(self):
        from engine.faces.chain import FaceChain

        return self.models.get(("face_chain",), lambda: FaceChain.from_service(self.models))

    def encode_identity(
        self, image: np.ndarray, *, name: str = "", aligned: bool = False, face_index: int = 0,
        restore: bool = False, token: Any = None, progress: ProgressFn = None,
    ) -> Identity:
        return self._face_chain().encode_identity(
            image, name=name, aligned=aligned, face_index=face_index, restore=restore, token=token,
            progress=progress,
        )

    def encode_burst(
        self, images: Sequence[np.ndarray], *, name: str = "", token: Any = None, progress: ProgressFn = None
    ) -> BurstResult:
        return self._face_chain().encode_burst(images, name=name, token=token, progress=progress)

    def likeness(self, face_a: np.ndarray, image_b: np.ndarray) -> float:
        from engine.faces.likeness import likeness_distance

        return likeness_distance(face_a, image_b)

    # -- generation -----------------------------------------------------------------------------
    def _pipeline(self):
        from engine.pipeline.generate import WPlusPipeline

        return self.models.get(("pipeline",), lambda: WPlusPipeline.from_service(self.models))

    def render(self, request: GenerateRequest, token: Any = None, progress: ProgressFn = None) -> Result:
        edited: np.ndarray | None = request.wplus
        if request.wplus is not None and not request.edits.is_identity:
            edited = self.apply_edits(request.wplus, request.edits)
        return self._pipeline().render(request, edited_wplus=edited, token=token, progress=progress)

    # -- StyleGAN2 preview ----------------------------------------------------------------------
    def _stylegan(self):
        from engine.pipeline.preview_backend import open_preview

        return self.models.get(
            ("stylegan",), lambda: open_preview(self.config, lambda: self.models.load("stylegan_preview"))[0]
        )

    def preview_face(
        self, wplus: np.ndarray, edits: EditState = EditState(), size: int = 256, *, exact: bool = False
    ) -> np.ndarray:
        """The StyleGAN2 face of `wplus` with `edits` applied (size×size×3 uint8).

        Args:
            wplus: 1×18×512 W+.
            edits: slider values applied first.
            size: 64, 128 or 256 (reduced path unless `exact`), 512 or 1024 (always the full image).
            exact: the official reconstruction (full 1024² image, resized): ≈3× the CPU time of the
                reduced 256² path; use it where the user judges likeness (right after capture).

        Raises:
            ModelMissing, ModelCorrupt: no usable decoder in the e4e file ("preview disabled: …").
            InvalidInput: bad W+ or size.
        """
        w = self.apply_edits(wplus, edits) if not edits.is_identity else wplus
        return self._stylegan().render(w, size=size, full=exact)

    def close(self) -> None:
        self.models.drop()
