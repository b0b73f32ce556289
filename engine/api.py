"""Pure data types exchanged between the engine and its callers (GUI, CLI, tests).

No torch here: the desktop imports this module freely. Arrays are numpy; every message is a frozen
dataclass so a request snapshot can cross threads safely.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from engine.errors import InvalidInput

WPLUS_SHAPE = (1, 18, 512)
DEFAULT_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
DEFAULT_PROMPT = "a woman wearing a spacesuit"
MAX_START_STEP = 30  # the official generate_idnoise caps the delayed-conditioning step at 30


class Scheduler(enum.StrEnum):
    """Denoising schedulers; the value is the serialized name."""

    EULER = "euler"  # the official default (EulerDiscreteScheduler)
    DDIM = "ddim"
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    EULER_ANCESTRAL = "euler_a"


def validate_wplus(wplus: np.ndarray, *, what: str = "W+") -> np.ndarray:
    """Return `wplus` as a contiguous float32 1×18×512 array, or raise InvalidInput.

    Accepts 18×512 too (adds the batch axis). Refuses NaN/Inf and any other shape.
    """
    arr = np.asarray(wplus)
    if arr.shape == WPLUS_SHAPE[1:]:
        arr = arr[None]
    if arr.shape != WPLUS_SHAPE:
        raise InvalidInput(
            f"{what} has shape {tuple(arr.shape)}, expected 1×18×512.",
            "Use a W+ produced by `wplus encode` (e4e, StyleGAN2-FFHQ space).",
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidInput(f"{what} has dtype {arr.dtype}, expected floating point.")
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{what} contains NaN or infinite values.", "Re-encode the face.")
    return np.ascontiguousarray(arr, dtype=np.float32)


@dataclass(frozen=True)
class EditState:
    """Slider values by catalog name; a missing name means 0 ("unchanged")."""

    values: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> EditState:
        return cls(tuple(sorted((k, float(v)) for k, v in values.items() if float(v) != 0.0)))

    def as_dict(self) -> dict[str, float]:
        return dict(self.values)

    def with_value(self, name: str, value: float) -> EditState:
        d = self.as_dict()
        d[name] = float(value)
        return EditState.from_mapping(d)

    def get(self, name: str) -> float:
        return self.as_dict().get(name, 0.0)

    @property
    def is_identity(self) -> bool:
        return not self.values


@dataclass(frozen=True, eq=False)
class Identity:
    """A person's W+ code and the aligned face it was encoded from."""

    id: str
    name: str
    wplus: np.ndarray  # float32 1×18×512
    aligned_face: np.ndarray | None = None  # uint8 512×512×3 RGB
    source: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)
    restored_face: np.ndarray | None = None  # uint8 512×512×3: the PSFRGAN-restored face e4e encoded, if any

    def __post_init__(self) -> None:
        object.__setattr__(self, "wplus", validate_wplus(self.wplus))


class ControlKind(enum.StrEnum):
    """What made a control image (metadata and the app's editor); the value is the serialized name."""

    OPENPOSE = "openpose"  # a skeleton drawn by the pose editor (OpenPose colours and widths)
    CANNY = "canny"  # edges computed locally with OpenCV
    IMAGE = "image"  # an image the artist made elsewhere, used as is


@dataclass(frozen=True, eq=False)
class ControlSpec:
    """One SD1.5 ControlNet applied to a render.

    `model` is a diffusers folder or a single-file checkpoint, as an absolute path (the CLI resolves a
    user's relative path against the current directory). `image` is the control image itself (uint8
    H×W×3 RGB, already preprocessed); the engine resizes and crops it to the output size.
    `start`/`end` are fractions of the denoising steps during which the ControlNet acts.
    """

    model: str
    image: np.ndarray
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    kind: ControlKind = ControlKind.IMAGE

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) < 8:
            raise InvalidInput(
                f"a control image must be an RGB uint8 image of at least 8×8, got {img.dtype} {img.shape}."
            )
        object.__setattr__(self, "image", np.ascontiguousarray(img))
        object.__setattr__(self, "kind", ControlKind(self.kind))
        if not math.isfinite(self.scale):
            raise InvalidInput(f"control scale must be a finite number, got {self.scale}.")
        if not (0.0 <= self.start < self.end <= 1.0):
            raise InvalidInput(
                f"control start/end must satisfy 0 ≤ start < end ≤ 1, got {self.start}/{self.end}."
            )

    @property
    def image_digest(self) -> str:
        """sha256 of the control image's shape and pixels: part of every cache key and of the PNG text."""
        import hashlib

        h = hashlib.sha256(repr(self.image.shape).encode())
        h.update(self.image.tobytes())
        return h.hexdigest()

    def key(self) -> tuple[Any, ...]:
        return (self.model, self.image_digest, self.scale, self.start, self.end)


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file (kohya/A1111 or diffusers/PEFT layout, SD1.5) with its weights.

    `weight` scales the UNet part; `text_weight` the text-encoder part (None: the same as `weight`,
    which is A1111's `<lora:NAME:WEIGHT>`).
    """

    path: str
    weight: float = 1.0
    text_weight: float | None = None

    def __post_init__(self) -> None:
        for name, v in (("weight", self.weight), ("text_weight", self.text_weight)):
            if v is not None and not math.isfinite(v):
                raise InvalidInput(f"LoRA {name} must be a finite number, got {v}.")

    @property
    def text(self) -> float:
        return self.weight if self.text_weight is None else self.text_weight


@dataclass(frozen=True, eq=False)
class GenerateRequest:
    """Everything that determines a generated image (and is written to its PNG metadata).

    `wplus` is the identity's unedited W+; `edits` are applied by the engine so the metadata keeps both.
    `wplus=None` renders plain SD1.5 (no identity).
    """

    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 23
    steps: int = 30
    guidance: float = 7.5
    scheduler: Scheduler = Scheduler.EULER
    scale: float = 1.0  # identity strength: the W+ branch's residual scale
    start_ratio: float = 20.0  # delayed subject conditioning, percent of the steps
    width: int = 512
    height: int = 512
    n: int = 1  # variations: seeds seed, seed+1, …
    freeu: bool = False
    wplus: np.ndarray | None = None
    edits: EditState = EditState()
    identity_name: str = ""
    controls: tuple[ControlSpec, ...] = ()  # ControlNets, applied in order; they never see the W+ tokens
    loras: tuple[LoraSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "controls", tuple(self.controls))
        object.__setattr__(self, "loras", tuple(self.loras))
        if self.wplus is not None:
            object.__setattr__(self, "wplus", validate_wplus(self.wplus))
        object.__setattr__(self, "scheduler", Scheduler(self.scheduler))
        self.validate()

    def validate(self) -> None:
        if not (1 <= self.steps <= 500):
            raise InvalidInput(f"steps must be between 1 and 500, got {self.steps}.")
        for name, v in (("width", self.width), ("height", self.height)):
            if v < 64 or v > 2048 or v % 8:
                raise InvalidInput(f"{name} must be a multiple of 8 between 64 and 2048, got {v}.")
        if not (1 <= self.n <= 64):
            raise InvalidInput(f"the number of variations must be between 1 and 64, got {self.n}.")
        if not (0 <= self.seed < 2**63):
            raise InvalidInput(f"seed must be a non-negative 63-bit integer, got {self.seed}.")
        for name, f in (("guidance", self.guidance), ("scale", self.scale), ("start_ratio", self.start_ratio)):
            if not math.isfinite(f):
                raise InvalidInput(f"{name} must be a finite number, got {f}.")
        if not (0.0 <= self.start_ratio <= 100.0):
            raise InvalidInput(f"start_ratio is a percentage (0–100), got {self.start_ratio}.")

    @property
    def start_step(self) -> int:
        """Last step index at which the W+ branch is still off (official: `i <= start` → scale 0)."""
        return min(int(self.start_ratio / 100 * self.steps), MAX_START_STEP)

    def wplus_scale_at(self, step: int) -> float:
        return 0.0 if step <= self.start_step else self.scale

    def replace(self, **changes: Any) -> GenerateRequest:
        return replace(self, **changes)


@dataclass(frozen=True)
class Progress:
    """One report from a long operation; `preview` is a small RGB uint8 image when available."""

    stage: str
    step: int
    total: int
    elapsed_s: float = 0.0
    preview: np.ndarray | None = field(default=None, compare=False)

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.step / self.total)

    @property
    def eta_s(self) -> float | None:
        if self.step <= 0 or self.total <= 0:
            return None
        return self.elapsed_s / self.step * (self.total - self.step)


@dataclass(frozen=True, eq=False)
class Result:
    """Images of one request (one per variation), with what is needed to save and reproduce them."""

    request: GenerateRequest
    images: tuple[np.ndarray, ...]  # uint8 H×W×3 RGB
    seeds: tuple[int, ...]
    timings: Mapping[str, float] = field(default_factory=dict)
    model_hashes: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # e.g. a prompt truncated to CLIP's 77 tokens


class EditKind(enum.StrEnum):
    """How a slider moves W+ (REFERENCE.md §5)."""

    INTERFACEGAN = "interfacegan"  # W+ += α·d on all 18 layers
    LATENT_DIRECTION = "latent_direction"  # W+[:8] += α·d[:8]
    GANSPACE = "ganspace"  # set a PCA coordinate; our slider is an offset from the identity's own


@dataclass(frozen=True)
class SliderSpec:
    """One edit slider of the catalog: 0 is always "unchanged"."""

    name: str
    label: str
    group: str
    kind: EditKind
    minimum: float
    maximum: float
    default: float = 0.0
    step: float = 0.1
    tooltip: str = ""


@dataclass(frozen=True)
class FaceBox:
    """A detected face in frame pixels, with its 68 landmarks (x, y) when computed."""

    left: float
    top: float
    right: float
    bottom: float
    landmarks: np.ndarray | None = field(default=None, compare=False)  # 68×2 float

    @property
    def area(self) -> float:
        return max(0.0, self.right - self.left) * max(0.0, self.bottom - self.top)


@dataclass(frozen=True)
class QualityReport:
    """Capture gates: `ok` when every gate passed; `reasons` say what to change otherwise."""

    ok: bool
    reasons: tuple[str, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class BurstResult:
    identity: Identity
    used: int
    dropped: tuple[tuple[int, str], ...]  # (frame index, reason)


class ModelStatus(enum.StrEnum):
    OK = "ok"
    UNVERIFIED = "unverified"  # present, no known checksum yet
    MISSING = "missing"
    CORRUPT = "corrupt"  # wrong size/hash/layout


@dataclass(frozen=True)
class ModelState:
    """What the models folder holds for one manifest entry."""

    id: str
    role: str
    path: str
    required: bool
    status: ModelStatus
    message: str = ""
    licence: str = ""
    source_url: str = ""


class EngineSession(Protocol):
    """What the desktop (through its bridge) and the CLI may call. All calls are synchronous.

    Long calls take an optional `token` (engine.cancel.CancelToken) checked at step boundaries and an
    optional `progress` callback receiving `Progress` (called on the caller's thread).
    """

    def model_states(
        self, *, verify: bool = False, token: Any = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> tuple[ModelState, ...]:
        """What the models folder holds. `verify=False` (instant) leaves unhashed files UNVERIFIED;
        `verify=True` hashes them (seconds per GB; `progress` reports bytes, `token` cancels)."""
        ...

    def catalog(self) -> tuple[SliderSpec, ...]: ...

    def apply_edits(self, wplus: np.ndarray, edits: EditState) -> np.ndarray: ...

    def encode_identity(
        self, image: np.ndarray, *, name: str = "", aligned: bool = False, face_index: int = 0,
        restore: bool = False, token: Any = None, progress: Callable[[Progress], None] | None = None,
    ) -> Identity:
        """`restore`: PSFRGAN restores the aligned face before e4e (the official `-s`; needs its file)."""
        ...

    def encode_burst(
        self, images: Sequence[np.ndarray], *, name: str = "",
        token: Any = None, progress: Callable[[Progress], None] | None = None,
    ) -> BurstResult: ...

    def render(
        self, request: GenerateRequest, token: Any = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> Result: ...

    def preview_face(
        self, wplus: np.ndarray, edits: EditState = EditState(), size: int = 256, *, exact: bool = False,
    ) -> np.ndarray:
        """The StyleGAN2 face of an (edited) W+, size×size×3 uint8. With a size ≤ 256, `exact=False` is the
        cheap reduced path (that level's RGB skip: coarser, for slider dragging) and `exact=True` the
        official reconstruction (the full 1024² image resized); 512/1024 are always exact."""
        ...

    def likeness(self, face_a: np.ndarray, image_b: np.ndarray) -> float: ...

    def close(self) -> None: ...
