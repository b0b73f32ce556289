"""What the models folder allows right now, and what each missing file costs (the guidance's words)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.api import ModelState, ModelStatus

# What the user loses while a file is missing, by manifest role. Required roles block something; the
# others only lower quality. A role not listed here falls back to the manifest's own wording.
MISSING_COST = {
    "sd15": "no image generation",
    "adapter": "no image generation (the W+ adapter carries the identity into Stable Diffusion)",
    "e4e": "no capture: photos and camera frames cannot be turned into identities",
    "landmarks": "no face alignment, so no capture",
    "parser": "no background whitening before encoding: the identity may carry some background texture",
    "vae": "Stable Diffusion's own VAE decodes instead of the sharper ft-MSE one of the official notebook",
    "adapter_stage1": "only the stage-2 adapter (the official default) can be used",
    "face_detector_cnn": "faces are found by dlib's HOG detector only (fewer faces at steep angles)",
    "face_recognition": "no likeness score under the results",
}
CAPTURE_ROLES = ("e4e", "landmarks")
GENERATE_ROLES = ("sd15", "adapter")


def _usable(s: ModelState) -> bool:
    return s.status in (ModelStatus.OK, ModelStatus.UNVERIFIED)


@dataclass(frozen=True)
class ModelsReport:
    """The models check turned into what works now (`checked` is False until the engine answered)."""

    checked: bool
    missing_required: tuple[ModelState, ...] = ()
    missing_optional: tuple[ModelState, ...] = ()
    problem: str = ""  # the check itself failed (no manifest, unreadable folder)

    @property
    def can_generate(self) -> bool:
        return self.checked and not self.problem and not any(s.role in GENERATE_ROLES for s in self.missing_required)

    @property
    def can_capture(self) -> bool:
        return self.checked and not self.problem and not any(s.role in CAPTURE_ROLES for s in self.missing_required)

    @property
    def complete(self) -> bool:
        return self.checked and not (self.problem or self.missing_required or self.missing_optional)

    @staticmethod
    def cost(state: ModelState) -> str:
        return MISSING_COST.get(state.role, state.message or "optional: results may differ slightly")

    def works_now(self) -> list[str]:
        """One line each for what the user can do now."""
        lines = ["the camera, face detection and the face box"]
        if self.can_capture:
            lines.append("capture: turning a photo or a camera frame into an identity")
        if self.can_generate:
            lines.append("generation with an identity, the edit sliders and saving")
        return lines

    def summary(self) -> str:
        """One status-bar line ("" when every file is there)."""
        if not self.checked or self.complete:
            return ""
        if self.problem:
            return "⚠ the models could not be checked"
        parts = []
        if self.missing_required:
            parts.append(f"⚠ {', '.join(s.id for s in self.missing_required)} missing")
        if self.missing_optional:
            parts.append(f"{', '.join(s.id for s in self.missing_optional)} missing (optional)")
        return " · ".join(parts)


def models_report(states: Any) -> ModelsReport:
    """Read `EngineSession.model_states()` (or the exception the check raised; None: not checked yet)."""
    if states is None:
        return ModelsReport(False)
    if not isinstance(states, tuple):
        return ModelsReport(True, problem=f"The models could not be checked: {states}")
    missing = [s for s in states if not _usable(s)]
    return ModelsReport(True, tuple(s for s in missing if s.required), tuple(s for s in missing if not s.required))
