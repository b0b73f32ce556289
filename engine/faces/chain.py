"""The whole face chain of the official script: detect → align → whiten → e4e → W+ (REFERENCE.md §1.1–1.5).

`FaceChain` owns the detector and loads the e4e encoder and the face parser once (through the
session's model service). Without the parser file the chain still runs, without whitening, and says so in
`Identity.info["warnings"]` and the log; without e4e it raises ModelMissing with a hint, unless e4e
runs from its export (ONNX Runtime, TensorRT), which needs no checkpoint.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.api import BurstResult, FaceBox, Identity, Progress
from engine.errors import FaceNotFound, InvalidInput, ModelMissing
from engine.faces.align import AlignMode, align_face, resize_aligned
from engine.faces.preprocess import e4e_input, removal_mask
from engine.faces.quality import QualityThresholds, assess
from engine.images import as_rgb_uint8

if TYPE_CHECKING:
    from engine.models.service import ModelService

log = logging.getLogger(__name__)

NO_PARSER_WARNING = (
    "The face parser (parse_multi_iter_90000.pth) is not installed: the background and clothes were not "
    "whitened before encoding, so the identity may carry background texture."
)
ProgressFn = Callable[[Progress], None] | None


def _open_face_runners(models: ModelService, *, with_parser: bool) -> tuple[Any, Any]:
    """The face_encoder/face_parser runners on the configured backend (torch for a part without export)."""
    from engine.backends.select import open_runners
    from engine.backends.torch_backend import TorchModuleRunners, module_runner
    from engine.devices import resolve_device

    loaders = {"face_encoder": lambda: module_runner("face_encoder", models.load("e4e"))}
    if with_parser:
        loaders["face_parser"] = lambda: module_runner("face_parser", models.load("parser"))
    device, _dtype = resolve_device(models.config.device, "float32")
    runners, choice = open_runners(models.config, lambda: TorchModuleRunners(loaders, device),
                                   components=("face_encoder",), partial=True)
    if choice.fallback_reasons:
        log.info("face chain backend: %s", choice.message)  # shown once through Identity warnings
    return runners, choice


def _export_path(models: ModelService, component: str) -> Path:
    from engine.backends.base import onnx_file_name
    from engine.backends.select import onnx_dir_for

    return onnx_dir_for(models.config) / onnx_file_name(component)


@dataclass(frozen=True)
class FacePrep:
    """An aligned face ready for e4e, with what the chain learnt on the way."""

    aligned: np.ndarray  # 512×512×3 uint8
    e4e_input: np.ndarray  # 1×3×256×256 float32
    whitened: bool
    info: dict[str, Any]
    restored: np.ndarray | None = None  # 512×512×3 uint8 PSFRGAN output (tensor2pil), when restoration ran


class FaceChain:
    """Photo or frames → Identity, with the official preprocessing.

    Args:
        e4e_loader: returns the `face_encoder` Runner (image 1×3×256×256 in [-1, 1] → wplus 1×18×512),
            on any backend (`engine.backends.torch_backend.module_runner` for a torch module).
        parser_loader: returns a FaceParser, or None when there is no parser file.
        detector: a FaceDetector (built lazily when None).
        align_mode: "official" (black fill) or "reflect".
        thresholds: quality gates for bursts.
        e4e_path, parser_path: shown in the identity's info.
        restorer_loader: returns a FaceRestorer (engine.faces.restore); raises ModelMissing without the file.
    """

    def __init__(
        self,
        e4e_loader: Callable[[], Any],
        parser_loader: Callable[[], Any] | None = None,
        *,
        detector=None,
        align_mode: AlignMode = "official",
        thresholds: QualityThresholds | None = None,
        e4e_path: str = "",
        parser_path: str = "",
        restorer_loader: Callable[[], Any] | None = None,
    ) -> None:
        self._e4e_loader = e4e_loader
        self._parser_loader = parser_loader
        self._detector = detector
        self.align_mode: AlignMode = align_mode
        self.thresholds = thresholds or QualityThresholds()
        self.e4e_path = e4e_path
        self.parser_path = parser_path
        self.backend_choice: Any = None  # engine.backends.select.BackendChoice when built from a config
        self._told: set[str] = set()
        self._restorer_loader = restorer_loader

    @classmethod
    def from_service(cls, models: ModelService) -> FaceChain:
        """The chain of a configuration: e4e and the parser located and loaded through the model service.

        The files are found now; they are converted and loaded on first use. On an exported backend
        (ONNX Runtime, TensorRT) whose `face_encoder` export opened — its export record checked against
        the weights it was made from, when that file is still at its recorded path — the e4e checkpoint
        is not needed: the export carries the whole encoder, `latent_avg` included.

        Raises:
            ModelMissing: the chain runs on torch (asked for, or fallen back to) and there is no e4e
                checkpoint, or a path given for it does not exist (the message names where it was expected).
        """
        # a path the user gave must exist whatever the backend; the models folder's file may be absent
        e4e_path = models.locate("e4e") if models.config.e4e else models.find("e4e")
        parser_path = models.find("parser")
        runners, choice = _open_face_runners(models, with_parser=parser_path is not None)
        if e4e_path is None and choice.backend == "torch":
            try:
                models.locate("e4e")
            except ModelMissing as exc:
                if not choice.fallback_reasons:
                    raise
                raise ModelMissing(exc.user_message, f"{exc.hint} ({choice.message})") from None
        e4e_shown = e4e_path if e4e_path is not None else _export_path(models, "face_encoder")

        parser_loader = None
        if parser_path is not None or "face_parser" in runners.available():

            def parser_loader():
                from engine.faces.parse import FaceParser

                return models.get(("face_parser", str(parser_path), runners.backend),
                                  lambda: FaceParser(runners.get("face_parser")))

        def restorer_loader():
            from engine.faces.restore import open_restorer

            return open_restorer(models)

        chain = cls(
            lambda: runners.get("face_encoder"),
            parser_loader,
            e4e_path=str(e4e_shown),
            parser_path=str(parser_path or ""),
            restorer_loader=restorer_loader,
        )
        chain.backend_choice = choice
        return chain

    # -- pieces -----------------------------------------------------------------------------------
    @property
    def detector(self):
        if self._detector is None:
            from engine.faces.detect import FaceDetector

            self._detector = FaceDetector()
        return self._detector

    def _parser(self):
        return self._parser_loader() if self._parser_loader is not None else None

    def _restorer(self):
        if self._restorer_loader is None:
            raise ModelMissing("Face restoration is not available in this face chain.")
        return self._restorer_loader()

    def find_faces(self, image: np.ndarray) -> list[FaceBox]:
        """Faces with landmarks, largest first (FaceNotFound with advice when there is none)."""
        faces = self.detector.detect(image)
        if not faces:
            raise FaceNotFound(
                "No face was found in the image.",
                "Use a well-lit photo where the face is frontal, unobstructed and at least ~100 px wide; "
                "if the image is already an aligned face crop, use the 'aligned' option (--aligned).",
            )
        return faces

    def align(self, image: np.ndarray, face: FaceBox) -> tuple[np.ndarray, float]:
        """Align one detected face; refuse it when its quad is not wider than the official 160 px."""
        assert face.landmarks is not None
        aligned, width = align_face(image, face.landmarks, mode=self.align_mode)
        if not width > self.thresholds.min_quad:
            raise FaceNotFound(
                f"The face is too small ({width:.0f} px across the crop, more than "
                f"{self.thresholds.min_quad:.0f} needed).",
                "Use a larger or closer photo of the face.",
            )
        return aligned, width

    def prepare_aligned(self, aligned: np.ndarray, info: dict[str, Any], *, restore: bool = False) -> FacePrep:
        """Whiten (when the parser is available) and build the e4e input of an aligned 512² face.

        With `restore`, the official `-s` order: ParseNet's logits of the ORIGINAL face give both the
        restorer's one-hot and the whitening mask; e4e reads the restored face's PNG values.
        """
        parser = self._parser()
        warnings = list(info.get("warnings", ()))
        restored = None
        if restore:
            restorer = self._restorer()
            if parser is None:
                raise ModelMissing(
                    "Face restoration needs the face parser (parse_multi_iter_90000.pth), which is not installed.",
                    "Put parse_multi_iter_90000.pth in the models folder, or turn restoration off.",
                )
            from engine.faces.restore import parse_onehot

            logits = parser.logits(aligned)
            mask = removal_mask(logits[0].argmax(dim=0).to("cpu").numpy())
            restored = restorer.restore(aligned, parse_onehot(logits)).image
            x = e4e_input(restored, mask)
            whitened = True
            info["whitened_fraction"] = float((mask > 0).mean())
        elif parser is not None:
            mask = parser.mask(aligned)
            x = e4e_input(aligned, mask)
            whitened = True
            info["whitened_fraction"] = float((mask > 0).mean())
        else:
            x = e4e_input(aligned, None)
            whitened = False
            warnings.append(NO_PARSER_WARNING)
            log.warning(NO_PARSER_WARNING)
        choice = self.backend_choice
        if choice is not None and choice.fell_back and choice.message not in self._told:
            warnings.append(choice.message)  # once per chain: the backend asked for could not run
            self._told.add(choice.message)
        info["warnings"] = warnings
        info["whitened"] = whitened
        info["restored"] = restored is not None
        return FacePrep(aligned=aligned, e4e_input=x, whitened=whitened, info=info, restored=restored)

    def encode_input(self, x: np.ndarray) -> np.ndarray:
        """Run e4e on a prepared 1×3×256×256 input; returns W+ 1×18×512 float32."""
        import torch

        runner = self._e4e_loader()
        with torch.inference_mode():
            w = runner(image=torch.from_numpy(x))["wplus"]
        out = w.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(out).all():
            raise InvalidInput("The encoder produced non-finite values.", "Check the e4e model file.")
        return out

    # -- API --------------------------------------------------------------------------------------
    def encode_identity(
        self,
        image: np.ndarray,
        *,
        name: str = "",
        aligned: bool = False,
        face_index: int = 0,
        restore: bool = False,
        token: Any = None,
        progress: ProgressFn = None,
    ) -> Identity:
        """Encode one face of a photo (or an already aligned face) to an Identity.

        Args:
            image: H×W×3 uint8 RGB (other layouts are normalised by `engine.images.as_rgb_uint8`).
            name: the identity's display name.
            aligned: the image is already an FFHQ-aligned face: resized to 512² bilinearly, no detection.
            face_index: which face, largest first.
            restore: restore the aligned face with PSFRGAN before encoding (the official `-s`; off by default).
            token: CancelToken checked between stages.
            progress: receives Progress(stage, step, total).

        Returns:
            Identity with W+ (1×18×512), the aligned 512² face, and info: whitened, warnings,
            faces_found, face_index, quad_width, box, align_mode, e4e, parser.

        Raises:
            FaceNotFound: no face, or the face is too small. InvalidInput: bad image or face_index.
            ModelMissing/ModelCorrupt: e4e problems. Cancelled: the token was set.
        """
        start = time.perf_counter()
        total = 4

        def step(stage: str, i: int) -> None:
            if token is not None:
                token.raise_if_cancelled()
            if progress is not None:
                progress(Progress(stage, i, total, time.perf_counter() - start))

        img = as_rgb_uint8(image)
        if restore:
            self._restorer()  # a missing PSFRGAN file is reported before any detection work
        info: dict[str, Any] = {"align_mode": "aligned input" if aligned else self.align_mode,
                                "e4e": Path(self.e4e_path).name, "parser": Path(self.parser_path).name}
        step("detect", 0)
        if aligned:
            face_img = resize_aligned(img)
        else:
            faces = self.find_faces(img)
            if not 0 <= face_index < len(faces):
                raise InvalidInput(
                    f"Face {face_index} was requested but the image has {len(faces)} face(s).",
                    f"Choose a face index from 0 to {len(faces) - 1} (0 = the largest).",
                )
            face = faces[face_index]
            info.update(faces_found=len(faces), face_index=face_index,
                        box=(face.left, face.top, face.right, face.bottom))
            if len(faces) > 1:
                info.setdefault("warnings", []).append(
                    f"{len(faces)} faces were found; face {face_index} (largest first) was used."
                )
            step("align", 1)
            face_img, width = self.align(img, face)
            info["quad_width"] = width
        step("parse", 2)
        prep = self.prepare_aligned(face_img, info, restore=restore)
        step("encode", 3)
        wplus = self.encode_input(prep.e4e_input)
        step("done", 4)
        return Identity(
            id=uuid.uuid4().hex, name=name, wplus=wplus, aligned_face=prep.aligned, source="photo", info=prep.info,
            restored_face=prep.restored,
        )

    def encode_burst(
        self,
        images: Sequence[np.ndarray],
        *,
        name: str = "",
        token: Any = None,
        progress: ProgressFn = None,
    ) -> BurstResult:
        """Average the W+ of several frames or photos of one person over the frames that pass the gates.

        Each image's largest face goes through the quality gates (size, pose, eyes, sharpness, exposure,
        border); the accepted ones are aligned, whitened and encoded, and their W+ averaged.

        Returns:
            BurstResult: the identity (aligned_face = the sharpest accepted frame's face), how many
            frames were used, and (index, reason) for each dropped one.

        Raises:
            FaceNotFound: no frame passed (the message summarises why).
            InvalidInput: no images. Cancelled: the token was set.
        """
        if len(images) == 0:
            raise InvalidInput("No images were given for the burst.", "Capture or choose at least one image.")
        start = time.perf_counter()
        n = len(images)
        dropped: list[tuple[int, str]] = []
        codes: list[np.ndarray] = []
        best: tuple[float, np.ndarray, dict[str, Any]] | None = None
        whitened_all = True
        warnings: list[str] = []
        for i, raw in enumerate(images):
            if token is not None:
                token.raise_if_cancelled()
            if progress is not None:
                progress(Progress("burst", i, n, time.perf_counter() - start))
            try:
                img = as_rgb_uint8(raw)
            except InvalidInput as exc:
                dropped.append((i, exc.user_message))
                continue
            faces = self.detector.detect(img)
            if not faces:
                dropped.append((i, "no face found"))
                continue
            report = assess(img, faces[0], self.thresholds)
            if not report.ok:
                dropped.append((i, "; ".join(report.reasons)))
                continue
            assert faces[0].landmarks is not None
            aligned, width = align_face(img, faces[0].landmarks, mode=self.align_mode)
            prep = self.prepare_aligned(aligned, {"quad_width": width})
            whitened_all &= prep.whitened
            for w in prep.info.get("warnings", ()):
                if w not in warnings:
                    warnings.append(w)
            codes.append(self.encode_input(prep.e4e_input))
            sharp = float(report.metrics.get("sharpness", 0.0))
            if best is None or sharp > best[0]:
                best = (sharp, aligned, dict(report.metrics))
        if progress is not None:
            progress(Progress("burst", n, n, time.perf_counter() - start))
        if not codes:
            summary = "; ".join(f"#{i}: {r}" for i, r in dropped[:5])
            raise FaceNotFound(
                f"None of the {n} images had a usable face ({summary}).",
                "Face the camera in even light, hold still and keep your eyes open.",
            )
        assert best is not None
        wplus = np.mean(np.concatenate(codes, axis=0), axis=0, keepdims=True).astype(np.float32)
        info = {
            "whitened": whitened_all,
            "warnings": warnings,
            "frames": n,
            "used": len(codes),
            "dropped": list(dropped),
            "best_metrics": best[2],
            "align_mode": self.align_mode,
            "e4e": Path(self.e4e_path).name,
            "parser": Path(self.parser_path).name,
        }
        identity = Identity(
            id=uuid.uuid4().hex, name=name, wplus=wplus, aligned_face=best[1], source="burst", info=info
        )
        return BurstResult(identity=identity, used=len(codes), dropped=tuple(dropped))
