"""Face restoration in the studio (PSFRGAN, the official `-s` step): is it available, should the user be
offered it, and did it help the likeness. Qt-free rules; `desktop.views.restore_panel` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.api import Identity, ModelState, ModelStatus, QualityReport
from engine.errors import EngineError

RESTORER_ROLE = "restorer"
RESTORER_FILE = "psfrgan_epoch15_net_G.pth"
PARSER_ROLE = "parser"
PARSER_FILE = "parse_multi_iter_90000.pth"
# A face whose alignment quad is narrower than this is upscaled more than 1.6× into the 512² crop e4e
# reads (the gate itself refuses ≤ 160 px); a sharpness under twice the gate's limit is visibly soft.
SMALL_FACE_PX = 320.0
SOFT_SHARPNESS = 80.0


def restorer_availability(states: Any) -> tuple[bool, str]:
    """(usable, reason when not) from the models check: the PSFRGAN file, and the face parser whose parse
    map PSFRGAN is given (the engine refuses to restore without it)."""
    if not isinstance(states, tuple):
        return False, "Checking the models folder…"
    usable = (ModelStatus.OK, ModelStatus.UNVERIFIED)
    by_role = {s.role: s for s in states if isinstance(s, ModelState)}
    restorer = by_role.get(RESTORER_ROLE)
    if restorer is None:
        return False, f"Needs {RESTORER_FILE}, which this models folder does not list."
    if restorer.status not in usable:
        what = "is damaged" if restorer.status == ModelStatus.CORRUPT else "is not in the models folder"
        return False, (f"Needs {RESTORER_FILE} (≈184 MB, CC BY-NC-SA 4.0), which {what}. "
                       "Models ▸ Models… says how to get it.")
    parser = by_role.get(PARSER_ROLE)
    if parser is None or parser.status not in usable:
        what = "is damaged" if parser is not None and parser.status == ModelStatus.CORRUPT else "is not installed"
        return False, (f"Also needs the face parser {PARSER_FILE} (≈85 MB, CC BY-NC-SA 4.0): restoration is guided "
                       f"by its parse map, and it {what}. Models ▸ Models… says how to get it.")
    return True, ""


def restore_suggestion(quality: QualityReport | None) -> str:
    """A hint to turn restoration on when the face in view is small or soft ('' otherwise)."""
    if quality is None or not quality.metrics:
        return ""
    why = []
    width = quality.metrics.get("quad_width")
    sharp = quality.metrics.get("sharpness")
    if width is not None and width < SMALL_FACE_PX:
        why.append(f"small ({width:.0f} px)")
    if sharp is not None and sharp < SOFT_SHARPNESS:
        why.append(f"blurry (sharpness {sharp:.0f})")
    if not why:
        return ""
    return f"The face is {' and '.join(why)}: try “Restore face (PSFRGAN)” before capturing."


@dataclass(frozen=True)
class RestorationComparison:
    """Likeness (dlib distance, smaller = more alike) of the e4e reconstruction to the aligned face,
    with and without restoration."""

    identity_id: str
    plain: float | None
    restored: float | None
    error: str = ""

    @property
    def helped(self) -> bool | None:
        if self.plain is None or self.restored is None:
            return None
        return self.restored < self.plain


def compare_restoration(session: Any, identity: Identity) -> RestorationComparison:
    """Runs on the engine worker: encode the original aligned face without restoration too, reconstruct
    both W+ with StyleGAN2 (the exact preview) and measure each against the aligned face."""
    face = identity.aligned_face
    try:
        if face is None:
            raise ValueError("the identity has no aligned face")
        plain = session.encode_identity(face, aligned=True, restore=False)
        d_plain = session.likeness(face, session.preview_face(plain.wplus, exact=True))
        d_rest = session.likeness(face, session.preview_face(identity.wplus, exact=True))
        return RestorationComparison(identity.id, float(d_plain), float(d_rest))
    except (EngineError, ValueError) as exc:
        msg = exc.user_message if isinstance(exc, EngineError) else str(exc)
        return RestorationComparison(identity.id, None, None, msg)


def readout_text(c: RestorationComparison) -> str:
    if c.helped is None:
        return f"Likeness comparison unavailable: {c.error}" if c.error else ""
    assert c.plain is not None
    assert c.restored is not None
    verdict = "restoration helped" if c.helped else "restoration did not help: try capturing without it"
    return f"Likeness of the reconstruction: {c.restored:.2f} restored vs {c.plain:.2f} without — {verdict}."
