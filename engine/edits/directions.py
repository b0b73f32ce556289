"""W+ edit directions with the official semantics (REFERENCE.md §5), and the slider catalog.

Three formats, three rules (W+ is 1×18×512, row l = StyleGAN2 layer l):

* InterFaceGAN (`interfacegan/*.npy`, 1×512 float32, unit norm): `W+' = W+ + α·d` on all 18 rows.
* latent_directions (`latent_directions/*.npy`, 18×512 **float64**, rows identical):
  `W+'[:8] = W+[:8] + α·d[:8]`, rows 8–17 unchanged. The official code adds the float64 file to the
  float32 W+ (so numpy/torch promote to float64) and casts back before use; we do the same on purpose:
  compute in float64, return float32.
* GANSpace (`ganspace/ffhq_pca.npz` + `ganspace_configs.csv`): the official edit **sets** the PCA
  coordinate k, measured on row 0, to an absolute strength α_abs on rows [start, end):
  `c = ⟨W+[0] − mean, comp_k⟩ / σ_k`, `Δ = (α_abs − c)·σ_k·comp_k`, `W+'[l] = W+[l] + Δ`.
  Sliders must leave the face unchanged at 0, so ours is an **offset**: slider s means
  `α_abs = c(identity's W+) + s`, i.e. `Δ = s·σ_k·comp_k`. The official strength S of a config is the
  slider value S − c for a face whose coordinate is c (so the config's sign keeps its meaning: a negative
  strength such as `smile … −20` is reached by moving the slider towards −).

Combining several edits: every edit is a displacement computed from the **unedited** identity (for
GANSpace the coordinate is measured on the identity's W+, not on a partly edited one), the
displacements are summed in float64 in catalog order, added to W+ in float64 and the result is cast to
float32 once. So edits commute up to float64 rounding, and a slider never undoes another slider (applying
the absolute GANSpace rule after other edits would silently cancel their component along comp_k).

Sensitive directions: `race_black`, `race_white`, `race_yellow` and `beauty` ship with the data (they are
part of the licensed set and of the official training augmentation) but are **not offered** as sliders:
changing a person's apparent ethnicity is a sensitive manipulation of their identity, the labels behind
these directions are crude ("yellow"), and "beauty" encodes a learned attractiveness judgement from
biased ratings. Asking for them by name raises InvalidInput saying so.
"""

from __future__ import annotations

import csv
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.api import EditKind, EditState, SliderSpec, validate_wplus
from engine.errors import InvalidInput, ModelCorrupt, ModelMissing

NUM_LAYERS = 18
DIM = 512
LATENT_DIRECTION_LAYERS = 8  # the official notebook edits rows 0..7 with latent_directions
INTERFACEGAN_RANGE = 4.0  # the notebook's strengths are range(-4, 4, 2)
LATENT_DIRECTION_RANGE = 4.0
SENSITIVE = frozenset({"race_black", "race_white", "race_yellow", "beauty"})
_SENSITIVE_REASON = (
    "it is not offered: changing a person's apparent ethnicity or pushing a face along a learned "
    "'beauty' rating is not something W+ Studio does (see docs/EDITS.md)."
)
_RESOURCE_HINT = "The application's resources are damaged or incomplete: reinstall W+ Studio."

GROUPS = (
    "Age & gender", "Expression", "Pose", "Eyes", "Face shape", "Hair", "Appearance", "Light & background", "More",
)


# -- the three rules ------------------------------------------------------------------------------


def _w64(wplus: np.ndarray) -> np.ndarray:
    return validate_wplus(wplus).astype(np.float64)


def interfacegan_delta(direction: np.ndarray, alpha: float) -> np.ndarray:
    """α·d on all 18 rows (float64 18×512)."""
    d = np.asarray(direction, dtype=np.float64).reshape(DIM)
    return np.broadcast_to(alpha * d, (NUM_LAYERS, DIM)).copy()


def latent_direction_delta(direction: np.ndarray, alpha: float) -> np.ndarray:
    """α·d on rows 0–7, zero on rows 8–17 (float64 18×512)."""
    d = np.asarray(direction, dtype=np.float64).reshape(NUM_LAYERS, DIM)
    delta = np.zeros((NUM_LAYERS, DIM))
    delta[:LATENT_DIRECTION_LAYERS] = alpha * d[:LATENT_DIRECTION_LAYERS]
    return delta


@dataclass(frozen=True, eq=False)
class GanSpacePCA:
    """The FFHQ W-space PCA: `mean` (512,), `comp` (K×512, unit rows), `std` (K,) — all float32 as shipped."""

    mean: np.ndarray
    comp: np.ndarray
    std: np.ndarray

    def coordinate(self, wplus: np.ndarray, index: int) -> float:
        """The official GANSpace coordinate ⟨W+[0] − mean, comp_k⟩ / σ_k (measured on row 0), in float64."""
        w0 = _w64(wplus)[0, 0]
        centered = w0 - self.mean.astype(np.float64)
        return float(centered @ self.comp[index].astype(np.float64) / float(self.std[index]))

    def delta_absolute(self, wplus: np.ndarray, index: int, start: int, end: int, alpha_abs: float) -> np.ndarray:
        """The official rule: the displacement that sets coordinate `index` to `alpha_abs` on rows [start, end)."""
        return self.delta_offset(index, start, end, alpha_abs - self.coordinate(wplus, index))

    def delta_offset(self, index: int, start: int, end: int, offset: float) -> np.ndarray:
        """The slider rule: α_abs = coordinate(identity) + offset, i.e. Δ = offset·σ_k·comp_k on rows [start, end)."""
        step = offset * float(self.std[index]) * self.comp[index].astype(np.float64)
        delta = np.zeros((NUM_LAYERS, DIM))
        delta[start:end] = step
        return delta


def apply_delta(wplus: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """float32(float64(W+) + Δ) as 1×18×512."""
    return (_w64(wplus) + delta.reshape(1, NUM_LAYERS, DIM)).astype(np.float32)


def interpolate(w_a: np.ndarray, w_b: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation `(1 − t)·w_a + t·w_b` of two W+ codes (float64 math, float32 1×18×512 out).

    Args:
        w_a: W+ at t = 0 (1×18×512 or 18×512).
        w_b: W+ at t = 1.
        t: mixing weight; values outside [0, 1] extrapolate.

    Raises:
        InvalidInput: a W+ of the wrong shape or with NaN/Inf, or a non-finite t.
    """
    if not math.isfinite(float(t)):
        raise InvalidInput(f"the interpolation weight must be a finite number, got {t}.")
    a, b = _w64(w_a), _w64(w_b)
    return ((1.0 - float(t)) * a + float(t) * b).astype(np.float32)


# -- catalog --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GanSpaceConfig:
    """One row of ganspace_configs.csv: PCA component, rows [start, end), the official strength."""

    name: str
    index: int
    start: int
    end: int
    strength: float


# (slider name, kind, source name, label, group) in display order; the catalog order is also the
# order in which edits are summed. Sources missing from this table are offered under "More".
_IG, _LD, _GS = EditKind.INTERFACEGAN, EditKind.LATENT_DIRECTION, EditKind.GANSPACE
_TABLE: tuple[tuple[str, EditKind, str, str, str], ...] = (
    ("age", _IG, "age", "Age", "Age & gender"),
    ("gender", _LD, "gender", "Gender", "Age & gender"),
    ("age_ld", _LD, "age", "Age (alternative)", "Age & gender"),
    ("elderly_woman", _GS, "elderly_woman", "Elderly woman", "Age & gender"),
    ("happy_elderly_lady", _GS, "happy_elderly_lady", "Happy elderly lady", "Age & gender"),
    ("boyishness", _GS, "boyishness", "Boyishness", "Age & gender"),
    ("smile", _IG, "smile", "Smile", "Expression"),
    ("smile_ld", _LD, "smile", "Smile (alternative)", "Expression"),
    ("happy", _LD, "emotion_happy", "Happy", "Expression"),
    ("sad", _LD, "emotion_sad", "Sad", "Expression"),
    ("angry", _LD, "emotion_angry", "Angry", "Expression"),
    ("surprise", _LD, "emotion_surprise", "Surprise", "Expression"),
    ("fear", _LD, "emotion_fear", "Fear", "Expression"),
    ("disgust", _LD, "emotion_disgust", "Disgust", "Expression"),
    ("relaxed", _LD, "emotion_easy", "Relaxed", "Expression"),
    ("smile_gs", _GS, "smile", "Smile (GANSpace)", "Expression"),
    ("big_smile", _GS, "big_smile", "Big smile", "Expression"),
    ("wide_smile", _GS, "wide_smile", "Wide smile", "Expression"),
    ("huge_grin", _GS, "huge_grin", "Huge grin", "Expression"),
    ("caricature_smile", _GS, "caricature_smile", "Caricature smile", "Expression"),
    ("show_front_teeth", _GS, "show_front_teeth", "Show front teeth", "Expression"),
    ("in_awe", _GS, "in_awe", "In awe", "Expression"),
    ("screaming", _GS, "screaming", "Screaming", "Expression"),
    ("displeased", _GS, "displeased", "Displeased", "Expression"),
    ("disgusted", _GS, "disgusted", "Disgusted", "Expression"),
    ("scary_eyes", _GS, "scary_eyes", "Scary eyes", "Expression"),
    ("fearful_eyes", _GS, "fearful_eyes", "Fearful eyes", "Expression"),
    ("pose", _IG, "pose", "Head turn", "Pose"),
    ("yaw", _LD, "angle_horizontal", "Head turn (alternative)", "Pose"),
    ("pitch", _LD, "angle_pitch", "Head tilt up/down", "Pose"),
    ("head_angle_up", _GS, "head_angle_up", "Head angle up", "Pose"),
    ("eyes_open", _LD, "eyes_open", "Eyes open", "Eyes"),
    ("eye_openness", _GS, "eye_openness", "Eye openness", "Eyes"),
    ("eye_wrinkles", _GS, "eye_wrinkles", "Eye wrinkles", "Eyes"),
    ("eyebrow_thickness", _GS, "eyebrow_thickness", "Eyebrow thickness", "Eyes"),
    ("glasses", _LD, "glasses", "Glasses", "Eyes"),
    ("face_shape", _LD, "face_shape", "Face shape", "Face shape"),
    ("face_width", _LD, "width", "Face width", "Face shape"),
    ("face_height", _LD, "height", "Face height", "Face shape"),
    ("face_roundness", _GS, "face_roundness", "Face roundness", "Face shape"),
    ("short_face", _GS, "short_face", "Short face", "Face shape"),
    ("large_jaw", _GS, "large_jaw", "Large jaw", "Face shape"),
    ("nose_length", _GS, "nose_length", "Nose length", "Face shape"),
    ("bald", _GS, "bald", "Bald", "Hair"),
    ("hairline", _GS, "hairline", "Hairline", "Hair"),
    ("curly_hair", _GS, "curly_hair", "Curly hair", "Hair"),
    ("frizzy_hair", _GS, "frizzy_hair", "Frizzy hair", "Hair"),
    ("happy_frizzy_hair", _GS, "happy_frizzy_hair", "Happy, frizzy hair", "Hair"),
    ("straight_bowl_cut", _GS, "straight_bowl_cut", "Straight bowl cut", "Hair"),
    ("dark_hair", _GS, "dark_hair", "Dark hair", "Hair"),
    ("white_hair", _GS, "white_hair", "White hair", "Hair"),
    ("lipstick", _GS, "lipstick", "Lipstick", "Appearance"),
    ("lipstick_and_age", _GS, "lipstick_and_age", "Lipstick and age", "Appearance"),
    ("mascara_vs_beard", _GS, "mascara_vs_beard", "Mascara vs. beard", "Appearance"),
    ("trimmed_beard", _GS, "trimmed_beard", "Trimmed beard", "Appearance"),
    ("wrinkles", _GS, "wrinkles", "Wrinkles", "Appearance"),
    ("light_lr", _GS, "light_lr", "Light left/right", "Light & background"),
    ("sunlight_in_face", _GS, "sunlight_in_face", "Sunlight in face", "Light & background"),
    ("overexposed", _GS, "overexposed", "Overexposed", "Light & background"),
    ("dark_hair_and_light_pos", _GS, "dark_hair_and_light_pos", "Dark hair, light position", "Light & background"),
    ("dark_bg_shiny_hair", _GS, "dark_bg_shiny_hair", "Dark background, shiny hair", "Light & background"),
    ("background_blur", _GS, "background_blur", "Background blur", "Light & background"),
)


@dataclass(frozen=True, eq=False)
class _Slider:
    spec: SliderSpec
    source: str
    vector: np.ndarray | None = None  # InterFaceGAN 512 float32 / latent_directions 18×512 float64
    config: GanSpaceConfig | None = None


def _spec(name: str, kind: EditKind, source: str, label: str, group: str, config: GanSpaceConfig | None) -> SliderSpec:
    if kind is EditKind.INTERFACEGAN:
        return SliderSpec(name, label, group, kind, -INTERFACEGAN_RANGE, INTERFACEGAN_RANGE, 0.0, 0.1,
                          f"InterFaceGAN '{source}': adds α·d to all 18 W+ layers.")
    if kind is EditKind.LATENT_DIRECTION:
        return SliderSpec(name, label, group, kind, -LATENT_DIRECTION_RANGE, LATENT_DIRECTION_RANGE, 0.0, 0.1,
                          f"Latent direction '{source}': adds α·d to W+ layers 0–7.")
    assert config is not None
    r = max(abs(config.strength), 1.0)
    return SliderSpec(
        name, label, group, kind, -r, r, 0.0, 0.5,
        f"GANSpace component {config.index}, layers {config.start}–{config.end - 1}: moves the face's own "
        f"coordinate by the slider value (in standard deviations); the official edit sets it to "
        f"{config.strength:+g}.",
    )


class DirectionLibrary:
    """The loaded directions and the slider catalog built from them.

    Args:
        interfacegan: name → 1×512 (or 512) direction.
        latent_directions: name → 18×512 float64 direction.
        pca: the GANSpace PCA.
        ganspace_configs: the GANSpace edit configs.
    """

    def __init__(
        self,
        interfacegan: Mapping[str, np.ndarray],
        latent_directions: Mapping[str, np.ndarray],
        pca: GanSpacePCA,
        ganspace_configs: Sequence[GanSpaceConfig],
    ) -> None:
        self.pca = pca
        sources: dict[tuple[EditKind, str], tuple[np.ndarray | None, GanSpaceConfig | None]] = {}
        for n, v in interfacegan.items():
            sources[(_IG, n)] = (np.asarray(v, dtype=np.float32).reshape(DIM), None)
        for n, v in latent_directions.items():
            if n not in SENSITIVE:
                sources[(_LD, n)] = (np.asarray(v, dtype=np.float64).reshape(NUM_LAYERS, DIM), None)
        for c in ganspace_configs:
            if c.name not in SENSITIVE:
                sources[(_GS, c.name)] = (None, c)
        sliders: list[_Slider] = []
        used: set[tuple[EditKind, str]] = set()
        for name, kind, source, label, group in _TABLE:
            if (kind, source) in sources:
                vec, cfg = sources[(kind, source)]
                sliders.append(_Slider(_spec(name, kind, source, label, group, cfg), source, vec, cfg))
                used.add((kind, source))
        suffix = {_IG: "_ig", _LD: "_ld", _GS: "_gs"}
        names = {s.spec.name for s in sliders}
        for (kind, source), (vec, cfg) in sources.items():  # files not in the table: offered under "More"
            if (kind, source) in used:
                continue
            name = source if source not in names else f"{source}{suffix[kind]}"
            names.add(name)
            label = source.replace("_", " ").capitalize()
            sliders.append(_Slider(_spec(name, kind, source, label, "More", cfg), source, vec, cfg))
        group_rank = {g: i for i, g in enumerate(GROUPS)}
        order = sorted(range(len(sliders)), key=lambda i: (group_rank.get(sliders[i].spec.group, len(GROUPS)), i))
        self._sliders: dict[str, _Slider] = {sliders[i].spec.name: sliders[i] for i in order}
        self._catalog = tuple(s.spec for s in self._sliders.values())

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> DirectionLibrary:
        """Load `interfacegan/*.npy`, `latent_directions/*.npy` and `ganspace/` from `root`.

        Raises:
            ModelMissing: `root` or one of its parts is missing.
            ModelCorrupt: a file has the wrong shape or content.
        """
        root = Path(root)
        if not root.is_dir():
            raise ModelMissing(f"The edit directions folder is missing: {root}.", _RESOURCE_HINT)
        ig = {p.stem: _load_npy(p, (1, DIM), (DIM,)) for p in sorted((root / "interfacegan").glob("*.npy"))}
        ld = {
            p.stem: _load_npy(p, (NUM_LAYERS, DIM), (1, NUM_LAYERS, DIM))
            for p in sorted((root / "latent_directions").glob("*.npy"))
        }
        pca = _load_pca(root / "ganspace" / "ffhq_pca.npz")
        configs = _load_configs(root / "ganspace" / "ganspace_configs.csv", pca)
        if not ig and not ld and not configs:
            raise ModelMissing(f"No edit directions found in {root}.", _RESOURCE_HINT)
        return cls(ig, ld, pca, configs)

    @classmethod
    def load_default(cls) -> DirectionLibrary:
        """Load the directions shipped in `resources/directions/`."""
        from engine.resources import resource_path

        return cls.load(resource_path("directions"))

    # -- catalog --------------------------------------------------------------------------------
    @property
    def catalog(self) -> tuple[SliderSpec, ...]:
        """All offered sliders, grouped (see GROUPS) and in the order edits are combined."""
        return self._catalog

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._sliders)

    def spec(self, name: str) -> SliderSpec:
        """The slider called `name`; InvalidInput if there is none."""
        return self._slider(name).spec

    def _slider(self, name: str) -> _Slider:
        slider = self._sliders.get(name)
        if slider is not None:
            return slider
        if name in SENSITIVE or name.removesuffix("_ld").removesuffix("_gs") in SENSITIVE:
            raise InvalidInput(f"The edit '{name}' is not available: {_SENSITIVE_REASON}")
        close = difflib.get_close_matches(name, self._sliders, n=3)
        hint = f"Did you mean {', '.join(close)}?" if close else "List the edits with `wplus edit --list`."
        raise InvalidInput(f"Unknown edit '{name}'.", hint)

    # -- applying -------------------------------------------------------------------------------
    def delta(self, wplus: np.ndarray, edits: EditState | Mapping[str, float]) -> np.ndarray:
        """The float64 18×512 displacement of all edits for this identity (summed in catalog order).

        Raises:
            InvalidInput: unknown or unavailable slider name, non-finite value, bad W+.
        """
        values = edits.as_dict() if isinstance(edits, EditState) else dict(edits)
        for name, v in values.items():
            self._slider(name)
            if not math.isfinite(float(v)):
                raise InvalidInput(f"The value of edit '{name}' must be a finite number, got {v}.")
        validate_wplus(wplus)
        total = np.zeros((NUM_LAYERS, DIM))
        for name, slider in self._sliders.items():
            v = float(values.get(name, 0.0))
            if v == 0.0:
                continue
            kind = slider.spec.kind
            if kind is EditKind.INTERFACEGAN:
                assert slider.vector is not None
                total += interfacegan_delta(slider.vector, v)
            elif kind is EditKind.LATENT_DIRECTION:
                assert slider.vector is not None
                total += latent_direction_delta(slider.vector, v)
            else:
                cfg = slider.config
                assert cfg is not None
                # α_abs = coordinate(identity) + v: the coordinate cancels, leaving v·σ_k·comp_k
                total += self.pca.delta_offset(cfg.index, cfg.start, cfg.end, v)
        return total

    def apply(self, wplus: np.ndarray, edits: EditState | Mapping[str, float]) -> np.ndarray:
        """Apply slider edits to an identity's W+.

        Args:
            wplus: the unedited W+ (1×18×512 or 18×512).
            edits: slider name → value (0 or absent = unchanged).

        Returns:
            float32 1×18×512 (an unchanged copy when every value is 0).

        Raises:
            InvalidInput: unknown or unavailable slider name, non-finite value, bad W+.
        """
        delta = self.delta(wplus, edits)
        if not delta.any():
            return validate_wplus(wplus).copy()
        return apply_delta(wplus, delta)


# -- file readers ---------------------------------------------------------------------------------


def _load_npy(path: Path, shape: tuple[int, ...], alt_shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelCorrupt(f"Cannot read the edit direction {path} ({exc}).", _RESOURCE_HINT) from exc
    if arr.shape not in (shape, alt_shape) or not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise ModelCorrupt(f"The edit direction {path} has shape {arr.shape} {arr.dtype}, expected {shape}.",
                           _RESOURCE_HINT)
    return arr.reshape(shape)


def _load_pca(path: Path) -> GanSpacePCA:
    try:
        with np.load(path, allow_pickle=False) as z:
            mean, comp, std = z["mean"], z["comp"], z["std"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelCorrupt(f"Cannot read the GANSpace PCA {path} ({exc}).", _RESOURCE_HINT) from exc
    k = std.shape[0] if std.ndim == 1 else -1
    if mean.size != DIM or k <= 0 or comp.size != k * DIM or not (std > 0).all():
        raise ModelCorrupt(f"The GANSpace PCA {path} has an unexpected layout.", _RESOURCE_HINT)
    return GanSpacePCA(mean.reshape(DIM), comp.reshape(k, DIM), std.reshape(k))


def _load_configs(path: Path, pca: GanSpacePCA) -> list[GanSpaceConfig]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelMissing(f"Cannot read the GANSpace edits {path} ({exc}).", _RESOURCE_HINT) from exc
    return list(_parse_configs(text.splitlines(), path, pca))


def _parse_configs(lines: Iterable[str], path: Path, pca: GanSpacePCA) -> Iterable[GanSpaceConfig]:
    for row in csv.reader(lines, delimiter="\t"):
        if not row or not row[0].strip():
            continue
        try:
            cfg = GanSpaceConfig(row[0].strip(), int(row[1]), int(row[2]), int(row[3]), float(row[4]))
        except (IndexError, ValueError) as exc:
            raise ModelCorrupt(f"Bad GANSpace config line {row!r} in {path}.", _RESOURCE_HINT) from exc
        if not (0 <= cfg.index < len(pca.std) and 0 <= cfg.start < cfg.end <= NUM_LAYERS):
            raise ModelCorrupt(f"GANSpace config '{cfg.name}' in {path} is out of range.", _RESOURCE_HINT)
        yield cfg
