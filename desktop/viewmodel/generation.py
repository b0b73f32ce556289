"""Generation settings: what the generation panel edits, turned into immutable `GenerateRequest`s."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from desktop.viewmodel.events import Event
from engine.api import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, EditState, GenerateRequest, Scheduler

# The draft preset (one click on slow machines): half the size and at most this many steps, one picture,
# with the same seed, identity, prompt and edits; Refine renders the same request at full settings.
DRAFT_STEPS = 12

SIZES = ((512, 512), (512, 640), (640, 512), (512, 768), (768, 512), (640, 640), (768, 768))


@dataclass(frozen=True)
class GenerationSettings:
    """The panel's values (defaults follow the official notebook)."""

    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 23
    seed_locked: bool = True
    steps: int = 30
    guidance: float = 7.5
    scheduler: str = Scheduler.EULER.value
    scale: float = 1.0
    start_ratio: float = 20.0
    width: int = 512
    height: int = 512
    n: int = 1
    live: bool = False
    live_steps: int = 12

    def request(self, *, wplus: Any = None, edits: EditState = EditState(), identity_name: str = "",
                live: bool = False) -> GenerateRequest:
        """The immutable request for the worker; live renders use fewer steps and one variation."""
        return GenerateRequest(
            prompt=self.prompt, negative_prompt=self.negative_prompt, seed=self.seed,
            steps=min(self.steps, self.live_steps) if live else self.steps,
            guidance=self.guidance, scheduler=Scheduler(self.scheduler), scale=self.scale,
            start_ratio=self.start_ratio, width=self.width, height=self.height,
            n=1 if live else self.n, wplus=wplus, edits=edits, identity_name=identity_name,
        )

    @classmethod
    def from_request(cls, req: GenerateRequest, base: GenerationSettings | None = None) -> GenerationSettings:
        base = base or cls()
        return replace(base, prompt=req.prompt, negative_prompt=req.negative_prompt, seed=req.seed,
                       seed_locked=True, steps=req.steps, guidance=req.guidance,
                       scheduler=Scheduler(req.scheduler).value, scale=req.scale, start_ratio=req.start_ratio,
                       width=req.width, height=req.height, n=req.n)

    def save(self, settings: Any) -> None:
        settings.beginGroup("generation")
        for k, v in asdict(self).items():
            settings.setValue(k, v)
        settings.endGroup()

    @classmethod
    def load(cls, settings: Any) -> GenerationSettings:
        """Read saved values; unknown or broken ones fall back to the defaults."""
        default = cls()
        values: dict[str, Any] = {}
        settings.beginGroup("generation")
        for f in fields(cls):
            raw = settings.value(f.name)
            if raw is None:
                continue
            kind = type(getattr(default, f.name))
            try:
                values[f.name] = (str(raw).lower() in ("1", "true", "yes")) if kind is bool else kind(raw)
            except (TypeError, ValueError):
                continue
        settings.endGroup()
        try:
            candidate = replace(default, **values)
            candidate.request()  # validates
            return candidate
        except Exception:
            return default


def draft_request(full: GenerateRequest) -> GenerateRequest:
    """The draft of `full`: each side halved (a multiple of 64, at least 64), ≤ DRAFT_STEPS steps, one picture."""

    def half(side: int) -> int:
        return max(64, side // 2 // 64 * 64)

    return replace(full, width=min(full.width, half(full.width)), height=min(full.height, half(full.height)),
                   steps=min(full.steps, DRAFT_STEPS), n=1)


class GenerationState:
    """Holds the current `GenerationSettings`; `changed(settings, field_name)` on every edit."""

    def __init__(self, settings: GenerationSettings | None = None) -> None:
        self.changed = Event()  # (GenerationSettings, what changed: field names, "*" or "*restore")
        self._s = settings or GenerationSettings()

    @property
    def settings(self) -> GenerationSettings:
        return self._s

    def update(self, **changes: Any) -> None:
        new = replace(self._s, **changes)
        if new != self._s:
            self._s = new
            self.changed.emit(new, ",".join(sorted(changes)))

    def set_all(self, settings: GenerationSettings) -> None:
        self._s = settings
        self.changed.emit(settings, "*")

    def new_seed(self) -> int:
        seed = random.SystemRandom().randrange(0, 2**32)
        self.update(seed=seed)
        return seed
