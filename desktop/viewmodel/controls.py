"""ControlNet and LoRA state for the app: what the controls panel and the pose editor edit (no Qt).

A plain Python object with listeners, so it is tested without a QApplication. It turns the artist's
controls (a pose, a photo's canny edges, an image made elsewhere) and LoRA list into the immutable
`ControlSpec`/`LoraSpec` of each `GenerateRequest`, keeps them as JSON for the settings, and puts back
the controls of a dropped PNG (`restore`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.api import ControlKind, ControlSpec, GenerateRequest, LoraSpec
from engine.controls.openpose import Pose, fit_face, pose_from_image, preset, render
from engine.errors import InvalidInput

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
STATE_VERSION = 1

ImageLoader = Callable[[str], np.ndarray]
Listener = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class ControlEntry:
    """One ControlNet with its control image's recipe.

    `source` is the photo canny edges are computed from (CANNY), the control image itself (IMAGE), or,
    for a pose restored from a PNG, the stored skeleton image, used as is until the pose is edited.
    """

    kind: ControlKind = ControlKind.OPENPOSE
    model: str = ""  # a ControlNet file or diffusers folder; "" until the artist chooses one
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    enabled: bool = True
    pose: Pose | None = None
    face: bool = False  # add the identity's face points to the pose
    source: np.ndarray | None = None
    source_path: str = ""
    low: int = 100
    high: int = 200
    prepared: bool = False  # `source` is already the control image (restored from a PNG)

    @property
    def title(self) -> str:
        what = {ControlKind.OPENPOSE: "Pose", ControlKind.CANNY: "Canny", ControlKind.IMAGE: "Image"}[self.kind]
        if self.source_path:
            what += f" · {Path(self.source_path).name}"
        return f"{what} → {Path(self.model).name if self.model else 'no ControlNet chosen'}"


@dataclass(frozen=True)
class LoraEntry:
    path: str
    weight: float = 1.0
    text_weight: float | None = None  # None: the text encoder takes `weight` too (A1111)
    enabled: bool = True

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def spec(self) -> LoraSpec:
        return LoraSpec(self.path, self.weight, self.text_weight)


def find_model_files(models_dir: Path | None, word: str) -> list[Path]:
    """Files (and diffusers folders) under `models_dir` whose path names `word`: the chooser's shortlist."""
    if models_dir is None or not Path(models_dir).is_dir():
        return []
    found: list[Path] = []
    try:
        for p in sorted(Path(models_dir).rglob("*")):
            rel = str(p.relative_to(models_dir)).lower()
            if word not in rel:
                continue
            single = p.is_file() and p.suffix.lower() in SUFFIXES and not (p.parent / "config.json").is_file()
            folder = p.is_dir() and (p / "config.json").is_file() and word in p.name.lower()
            if single or folder:
                found.append(p)
    except OSError as exc:  # an unreadable folder: the file dialog still works
        log.info("cannot list %s: %s", models_dir, exc)
    return found


class ControlsModel:
    """The controls and LoRAs of the next render; `subscribe(fn)` gets `fn(what)` after every change.

    `what` is "controls", "pose" (a keypoint moved: cheap to redraw), "loras", "landmarks" or "*".
    """

    def __init__(self, image_loader: ImageLoader | None = None) -> None:
        self._controls: list[ControlEntry] = []
        self._loras: list[LoraEntry] = []
        self._listeners: list[Listener] = []
        self.image_loader = image_loader  # reads a saved control's photo back (the app: Qt's reader)
        self.landmarks: np.ndarray | None = None  # the current identity's 68 dlib points (any frame)
        self._detector: Any = None

    # -- observers ------------------------------------------------------------------------------
    def subscribe(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def _emit(self, what: str) -> None:
        for fn in list(self._listeners):
            fn(what)

    # -- controls -------------------------------------------------------------------------------
    @property
    def controls(self) -> tuple[ControlEntry, ...]:
        return tuple(self._controls)

    def control(self, index: int) -> ControlEntry:
        return self._controls[index]

    def add_control(self, entry: ControlEntry) -> int:
        self._controls.append(entry)
        self._emit("controls")
        return len(self._controls) - 1

    def add_pose(self, preset_name: str = "standing", model: str = "", aspect: float = 1.0) -> int:
        """A pose control starting from a preset, proportioned for an output of `aspect` = width / height."""
        return self.add_control(ControlEntry(ControlKind.OPENPOSE, model, pose=preset(preset_name, aspect)))

    def add_canny(self, photo: np.ndarray, path: str = "", model: str = "") -> int:
        return self.add_control(ControlEntry(ControlKind.CANNY, model, source=_rgb(photo), source_path=path))

    def add_image(self, image: np.ndarray, path: str = "", model: str = "") -> int:
        """An image the artist made elsewhere (a pose, a depth map…), used as the control image as is."""
        return self.add_control(ControlEntry(ControlKind.IMAGE, model, source=_rgb(image), source_path=path))

    def remove_control(self, index: int) -> None:
        del self._controls[index]
        self._emit("controls")

    def update_control(self, index: int, **changes: Any) -> None:
        """Change settings of one control (model, scale, start, end, enabled, face, low, high)."""
        old = self._controls[index]
        new = replace(old, **changes)
        if (new.start, new.end) != (old.start, old.end) and not (0.0 <= new.start < new.end <= 1.0):
            raise InvalidInput(f"a ControlNet acts from start to end with 0 ≤ start < end ≤ 1, got "
                               f"{new.start:.2f}–{new.end:.2f}.", "Keep the start before the end.")
        self._controls[index] = new
        self._emit("controls")

    def set_pose(self, index: int, pose: Pose, *, what: str = "pose") -> None:
        entry = self._controls[index]
        if entry.kind is not ControlKind.OPENPOSE:
            raise InvalidInput("only a pose control has keypoints.")
        # an edited pose is drawn from its keypoints again, no longer the image stored in a PNG
        self._controls[index] = replace(entry, pose=pose, source=None, prepared=False)
        self._emit(what)

    def move_keypoint(self, index: int, keypoint: int, x: float, y: float) -> None:
        pose = self._controls[index].pose or Pose()
        self.set_pose(index, pose.moved(keypoint, min(1.0, max(0.0, x)), min(1.0, max(0.0, y))))

    def toggle_keypoint(self, index: int, keypoint: int, where: tuple[float, float] | None = None) -> None:
        """Hide a visible keypoint (its limbs go), or show a hidden one at `where` (default: as standing)."""
        pose = self._controls[index].pose or Pose()
        if pose.points[keypoint] is not None:
            self.set_pose(index, pose.without(keypoint))
        else:
            x, y = where or preset("standing").points[keypoint] or (0.5, 0.5)
            self.set_pose(index, pose.moved(keypoint, x, y))

    def apply_preset(self, index: int, name: str, aspect: float = 1.0) -> None:
        self.set_pose(index, preset(name, aspect), what="controls")

    def pose_of(self, index: int, width: int, height: int) -> Pose:
        """The pose as drawn: with the identity's face points on its eyes when asked and possible."""
        entry = self._controls[index]
        pose = (entry.pose or Pose()).with_face(None)
        if entry.face and self.landmarks is not None and None not in (pose.points[14], pose.points[15]):
            pose = fit_face(pose, self.landmarks, width, height)
        return pose

    def control_image(self, index: int, width: int, height: int) -> np.ndarray:
        """The control image of one control at the output size (the engine crops other sizes)."""
        entry = self._controls[index]
        if entry.prepared or entry.kind is ControlKind.IMAGE:
            if entry.source is None:
                raise InvalidInput(f"control {index + 1} has no image.", "Choose the image again.")
            return entry.source
        if entry.kind is ControlKind.CANNY:
            from engine.controls.canny import canny

            if entry.source is None:
                raise InvalidInput(f"control {index + 1} has no photo to find edges in.", "Choose the photo again.")
            return canny(entry.source, entry.low, entry.high)
        return render(self.pose_of(index, width, height), width, height)

    def control_specs(self, width: int, height: int) -> tuple[ControlSpec, ...]:
        """The enabled controls as `ControlSpec`s.

        Raises:
            InvalidInput: an enabled control has no ControlNet file chosen.
        """
        specs = []
        for i, entry in enumerate(self._controls):
            if not entry.enabled:
                continue
            if not entry.model:
                raise InvalidInput(f"control {i + 1} ({entry.title.split(' →')[0]}) has no ControlNet file.",
                                   "Choose its ControlNet (a .safetensors file or a diffusers folder), "
                                   "or switch the control off.")
            specs.append(ControlSpec(entry.model, self.control_image(i, width, height), entry.scale, entry.start,
                                     entry.end, entry.kind))
        return tuple(specs)

    # -- LoRAs ----------------------------------------------------------------------------------
    @property
    def loras(self) -> tuple[LoraEntry, ...]:
        return tuple(self._loras)

    def add_lora(self, path: str, weight: float = 1.0, text_weight: float | None = None) -> int:
        self._loras.append(LoraEntry(str(path), float(weight), text_weight))
        self._emit("loras")
        return len(self._loras) - 1

    def remove_lora(self, index: int) -> None:
        del self._loras[index]
        self._emit("loras")

    def update_lora(self, index: int, **changes: Any) -> None:
        new = replace(self._loras[index], **changes)
        new.spec()  # validates the weights
        self._loras[index] = new
        self._emit("loras")

    def lora_specs(self) -> tuple[LoraSpec, ...]:
        return tuple(e.spec() for e in self._loras if e.enabled)

    # -- the request ----------------------------------------------------------------------------
    def apply(self, request: GenerateRequest) -> GenerateRequest:
        """`request` with these controls (drawn at its size) and LoRAs."""
        controls = self.control_specs(request.width, request.height)
        loras = self.lora_specs()
        if not controls and not loras and not request.controls and not request.loras:
            return request
        return request.replace(controls=controls, loras=loras)

    def restore(self, request: GenerateRequest) -> None:
        """Put back the controls and LoRAs of a restored request (a dropped PNG, a history entry).

        The request's controls and LoRAs become the enabled ones. A control the artist still has that
        draws the same image (same ControlNet) is kept as it is, editable; what the request lacks is kept
        but switched off, so the restored render is reproduced and no work is lost. A pose that comes
        only from the PNG is editable too: its keypoints are read back from the stored skeleton image.
        """
        old = list(self._controls)
        restored: list[ControlEntry] = []
        for spec in request.controls:
            match = next((k for k, e in enumerate(old) if e.model == spec.model and e.kind is spec.kind
                          and self._draws(e, spec.image, request.width, request.height)), None)
            if match is not None:
                entry = old.pop(match)
                restored.append(replace(entry, scale=spec.scale, start=spec.start, end=spec.end, enabled=True))
                continue
            pose = None
            if spec.kind is ControlKind.OPENPOSE:
                try:
                    pose = pose_from_image(spec.image)
                except InvalidInput:
                    pose = None
            restored.append(ControlEntry(spec.kind, spec.model, spec.scale, spec.start, spec.end, True, pose=pose,
                                         source=spec.image, prepared=True))
        self._controls = restored + [replace(e, enabled=False) for e in old]
        wanted = [LoraEntry(s.path, s.weight, s.text_weight) for s in request.loras]
        paths = {e.path for e in wanted}
        self._loras = wanted + [replace(e, enabled=False) for e in self._loras if e.path not in paths]
        self._emit("*")

    def _draws(self, entry: ControlEntry, image: np.ndarray, width: int, height: int) -> bool:
        try:
            mine = self.control_image(self._controls.index(entry), width, height)
        except (InvalidInput, ValueError):
            return False
        return mine.shape == image.shape and bool(np.array_equal(mine, image))

    # -- identity face points -------------------------------------------------------------------
    def set_landmarks(self, landmarks: np.ndarray | None) -> None:
        self.landmarks = None if landmarks is None else np.asarray(landmarks, np.float64).reshape(68, 2)
        self._emit("landmarks")

    def detect_landmarks(self, face: np.ndarray) -> np.ndarray | None:
        """dlib's 68 landmarks of the largest face in `face` (an identity's aligned face), or None.

        Slow (the model load is ≈1 s once, then ≈0.1 s): call it off the GUI thread.
        """
        if self._detector is None:
            from engine.faces.detect import (
                FaceDetector,  # dlib only (no torch): the import contracts check it
            )

            self._detector = FaceDetector()
        faces = self._detector.detect(face)
        return None if not faces else np.asarray(faces[0].landmarks, np.float64)

    # -- settings -------------------------------------------------------------------------------
    def to_json(self) -> str:
        """Everything but pixels: photos and images are remembered by path and read again on load."""
        controls = []
        for e in self._controls:
            if e.kind is not ControlKind.OPENPOSE and not e.source_path:
                continue  # a restored image without a file: nothing to read it back from
            d: dict[str, Any] = {"kind": e.kind.value, "model": e.model, "scale": e.scale, "start": e.start,
                                 "end": e.end, "enabled": e.enabled, "face": e.face, "low": e.low, "high": e.high,
                                 "source_path": e.source_path}
            if e.pose is not None:
                d["pose"] = e.pose.to_dict()
            controls.append(d)
        loras = [{"path": e.path, "weight": e.weight, "text_weight": e.text_weight, "enabled": e.enabled}
                 for e in self._loras]
        return json.dumps({"version": STATE_VERSION, "controls": controls, "loras": loras})

    def load_json(self, text: str) -> list[str]:
        """Replace the state with saved JSON; returns what could not be restored (a moved photo…)."""
        problems: list[str] = []
        try:
            d = json.loads(text)
            if d.get("version") != STATE_VERSION:
                return [f"saved controls of another version ({d.get('version')})"]
            controls = []
            for c in d.get("controls", ()):
                kind = ControlKind(c["kind"])
                source = None
                if kind is not ControlKind.OPENPOSE:
                    try:
                        if self.image_loader is None:
                            raise InvalidInput("no image reader")
                        source = _rgb(self.image_loader(c["source_path"]))
                    except Exception as exc:
                        problems.append(f"{c.get('source_path')}: {exc}")
                        continue
                pose = Pose.from_dict(c["pose"]) if c.get("pose") else None
                controls.append(ControlEntry(kind, str(c["model"]), float(c["scale"]), float(c["start"]),
                                             float(c["end"]), bool(c["enabled"]), pose, bool(c.get("face")),
                                             source, str(c.get("source_path", "")), int(c["low"]), int(c["high"])))
            loras = [LoraEntry(str(x["path"]), float(x["weight"]),
                               None if x.get("text_weight") is None else float(x["text_weight"]),
                               bool(x.get("enabled", True))) for x in d.get("loras", ())]
        except (ValueError, KeyError, TypeError, AttributeError, InvalidInput) as exc:
            return [f"the saved controls are unreadable ({exc})"]
        self._controls, self._loras = controls, loras
        self._emit("*")
        return problems


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise InvalidInput(f"a control image must be RGB uint8, got {a.dtype} {a.shape}.")
    return np.ascontiguousarray(a[..., :3])
