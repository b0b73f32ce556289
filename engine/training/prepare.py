"""Training-data preparation from a folder of photos, with the product's face chain (REFERENCE.md §1, §6).

Stage 1: the aligned 512² face and the e4e W+ of the face **with** its background (as the official FFHQ set).
Stage 2: the in-the-wild photo (short side 560; training resizes to 512–560), its face-region mask (ParseNet
face and hair classes warped back from the aligned crop when the parser is installed, else the hull of the
landmarks), and the **background-whitened** W+ of the aligned face. Captions: `NAME.txt` next to a photo (one
caption per line), else a template (BLIP-2, which the paper used, cannot be downloaded here).

Photos that fail (unreadable, no face, several faces, too small) are listed in `report.json`; they never stop
the run. Items already in the manifest are skipped, so an interrupted build continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError, InvalidInput
from engine.training.data import (
    DEFAULT_CAPTION,
    FORMAT,
    INFO,
    MANIFEST,
    STORED_SHORT_SIDE,
    VERSION,
    read_manifest,
)

log = logging.getLogger(__name__)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# ParseNet (PSFRGAN order) labels kept as "face region": skin, nose, glasses, eyes, brows, ears, mouth, lips, hair
FACE_LABELS = tuple(range(1, 14))
MIN_SHORT_SIDE = 256
ALIGNED = 512


@dataclass
class BuildReport:
    done: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def photos_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def list_photos(folder: str | os.PathLike[str]) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInput(f"The photos folder {root} does not exist.", "Give a folder of face photos.")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _caption(photo: Path) -> str:
    side = photo.with_suffix(".txt")
    if side.is_file():
        text = "\n".join(x.strip() for x in side.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip())
        if text:
            return text
    return DEFAULT_CAPTION


def landmark_hull_mask(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Face region without a parser: hull of the jaw and brows, the brows lifted to cover the forehead."""
    import cv2

    lm = np.asarray(landmarks, np.float64)
    jaw, brows = lm[0:17], lm[17:27].copy()
    height = lm[8, 1] - lm[17:27, 1].mean()
    brows[:, 1] -= 0.35 * height
    hull = cv2.convexHull(np.concatenate([jaw, brows]).astype(np.float32)).astype(np.int32)
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 255)
    return mask


def parser_face_mask(labels: np.ndarray, landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """ParseNet face classes of the aligned crop (its label map), warped back into the photo through the quad."""
    import cv2

    from engine.faces.align import face_quad

    face = np.isin(labels, FACE_LABELS).astype(np.uint8) * 255
    corners = face_quad(landmarks).corners.astype(np.float32)  # → aligned UL, LL, LR, UR
    s = float(face.shape[0])
    square = np.array([[0, 0], [0, s], [s, s], [s, 0]], np.float32)
    mat = cv2.getPerspectiveTransform(square, corners)
    return cv2.warpPerspective(face, mat, (shape[1], shape[0]), flags=cv2.INTER_LINEAR, borderValue=0)


def process_photo(chain: Any, photo: Path, stage: int, out: Path) -> dict[str, Any]:
    """One photo → its files under `out` and its manifest record (raises EngineError/OSError on failure)."""
    import cv2

    from engine.faces.preprocess import e4e_input
    from engine.fileio import atomic_write_bytes
    from engine.images import load_image

    digest = _sha256(photo)
    item_id = digest[:16]
    image = load_image(photo)
    faces = chain.find_faces(image)
    if len(faces) > 1:
        raise InvalidInput(f"{len(faces)} faces were found; training photos must show one person.")
    face = faces[0]
    aligned, _width = chain.align(image, face)
    record: dict[str, Any] = {"id": item_id, "source": str(photo), "sha256": digest, "caption": _caption(photo),
                              "wplus": f"wplus/{item_id}.npy"}

    def write_png(rel: str, arr: np.ndarray) -> None:
        ok, buf = cv2.imencode(".png", arr)
        if not ok:
            raise OSError(f"cannot encode {rel}")
        atomic_write_bytes(out / rel, buf.tobytes())

    def write_npy(rel: str, arr: np.ndarray) -> None:
        import io

        bio = io.BytesIO()
        np.save(bio, arr)
        atomic_write_bytes(out / rel, bio.getvalue())

    if stage == 1:
        wplus = chain.encode_input(e4e_input(aligned, None))  # with background, as the official FFHQ set
        write_png(f"images/{item_id}.png", cv2.cvtColor(aligned, cv2.COLOR_RGB2BGR))
        record.update(image=f"images/{item_id}.png", face_box=[0, 0, ALIGNED, ALIGNED], whitened=False)
    else:
        h, w = image.shape[:2]
        if min(h, w) < MIN_SHORT_SIDE:
            raise InvalidInput(f"the photo is too small ({w}×{h}; the short side must be at least {MIN_SHORT_SIDE}).")
        parser = chain._parser()
        assert face.landmarks is not None
        if parser is not None:
            # one parse serves both the whitening (as FaceChain.prepare_aligned) and the face region
            from engine.faces.preprocess import removal_mask

            labels = parser.labels(aligned)
            wplus = chain.encode_input(e4e_input(aligned, removal_mask(labels)))
            mask = parser_face_mask(labels, face.landmarks, (h, w))
        else:
            wplus = chain.encode_input(chain.prepare_aligned(aligned, {}).e4e_input)
            mask = landmark_hull_mask(face.landmarks, (h, w))
        k = STORED_SHORT_SIDE / min(h, w)
        size = (round(w * k), round(h * k))
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC
        stored = cv2.resize(image, size, interpolation=interp)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
        mask = np.where(mask >= 128, 255, 0).astype(np.uint8)
        write_png(f"images/{item_id}.png", cv2.cvtColor(stored, cv2.COLOR_RGB2BGR))
        write_png(f"masks/{item_id}.png", mask)
        box = [face.left * k, face.top * k, face.right * k, face.bottom * k]
        record.update(image=f"images/{item_id}.png", mask=f"masks/{item_id}.png", face_box=[float(v) for v in box],
                      face_area=float((mask > 0).sum()), framing="portrait", whitened=parser is not None,
                      mask_source="parser" if parser is not None else "landmarks")
    write_npy(record["wplus"], np.asarray(wplus, np.float32).reshape(1, 18, 512))
    return record


# -- parallel driver -----------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # per worker process: its own face chain (dlib and torch are not shared)


def _init_worker(factory: Callable[[], Any], stage: int, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(chain=factory(), stage=stage, out=Path(out))


def _work(photo: str) -> tuple[str, dict[str, Any] | None, str]:
    try:
        return photo, process_photo(_WORKER["chain"], Path(photo), _WORKER["stage"], _WORKER["out"]), ""
    except EngineError as exc:
        return photo, None, exc.user_message
    except (OSError, ValueError) as exc:
        return photo, None, f"{type(exc).__name__}: {exc}"


def build_dataset(photos_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], stage: int,
                  chain_factory: Callable[[], Any], *, workers: int = 1, progress: bool = True) -> BuildReport:
    """Prepare (or continue preparing) a stage-1/2 dataset. `chain_factory` builds a FaceChain per worker.

    Raises:
        InvalidInput: no photos folder, or `out_dir` holds a dataset of the other stage.
    """
    if stage not in (1, 2):
        raise InvalidInput(f"--stage must be 1 or 2, got {stage}.")
    out = Path(out_dir)
    info_path = out / INFO
    if info_path.is_file():
        old = json.loads(info_path.read_text(encoding="utf-8"))
        if old.get("stage") != stage:
            raise InvalidInput(f"{out} already holds a stage-{old.get('stage')} dataset.",
                               "Choose another output folder for this stage.")
    photos = list_photos(photos_dir)
    for sub in ("images", "wplus") + (("masks",) if stage == 2 else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "stage": stage}) + "\n", encoding="utf-8")
    done_sources = {item.get("source") for item in read_manifest(out)}
    todo = [p for p in photos if str(p) not in done_sources]
    report = BuildReport(skipped=len(photos) - len(todo))
    start = time.perf_counter()
    with (out / MANIFEST).open("a", encoding="utf-8") as manifest:
        for photo, record, error in _run(todo, chain_factory, stage, out, workers, progress):
            if record is None:
                report.failed.append({"photo": photo, "reason": error})
            else:
                manifest.write(json.dumps(record) + "\n")
                manifest.flush()
                report.done += 1
    report.seconds = time.perf_counter() - start
    (out / "report.json").write_text(json.dumps({
        "stage": stage, "photos": len(photos), "added": report.done, "skipped_already_done": report.skipped,
        "failed": report.failed, "seconds": round(report.seconds, 3),
        "captions": "NAME.txt sidecars, else the template (BLIP-2 captions cannot be generated offline)",
    }, indent=2) + "\n", encoding="utf-8")
    return report


def _run(todo: list[Path], factory: Callable[[], Any], stage: int, out: Path, workers: int,
         progress: bool) -> Iterable[tuple[str, dict[str, Any] | None, str]]:
    bar = _Bar(len(todo), progress)
    if workers <= 1:
        _init_worker(factory, stage, str(out))
        for p in todo:
            res = _work(str(p))
            bar.tick(res[2] == "")
            yield res
    else:
        ctx = multiprocessing.get_context("spawn" if sys.platform == "win32" else "fork")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(factory, stage, str(out))) as pool:
            for res in pool.imap_unordered(_work, [str(p) for p in todo]):
                bar.tick(res[2] == "")
                yield res
    bar.close()


class _Bar:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and total:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=total, unit="photo", file=sys.stderr, dynamic_ncols=True)
        self.failed = 0

    def tick(self, ok: bool) -> None:
        self.failed += not ok
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
