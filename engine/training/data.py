"""Training datasets: the manifest format, loading, the stage-2 augmentation (REFERENCE.md §6) and the batch order.

A dataset folder (written by `wplus dataset build`):

    dataset.json      {"format": "wplus-train", "version": 1, "stage": 1|2}
    manifest.jsonl    one item per line: id, source, sha256, image, wplus, caption, face_box[, mask, face_area]
    images/ wplus/ masks/  the files the items name (paths relative to the folder)
    report.json       photos that failed and why

Stage 1: `image` is the aligned 512² face, `wplus` its e4e W+ with background. Stage 2: `image` is the
in-the-wild photo (short side 560), `mask` its face region (0/255), `wplus` the background-whitened W+ of the
aligned face, `face_box` the face in image pixels.

Every random draw of an item is a function of (seed, epoch, index) and the batch order of (seed, epoch), so a
resumed run and a run split over several processes see exactly the same samples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidInput

FORMAT = "wplus-train"
VERSION = 1
MANIFEST = "manifest.jsonl"
INFO = "dataset.json"
STORED_SHORT_SIDE = 560  # stage-2 photos are stored with this short side; training resizes to 512–560
# Stage-1 text: the caption branch of train_face.py is dead code; one of 13 templates filled with "face".
# The first four are the ones REFERENCE.md §6 quotes; the rest follow the same textual-inversion list.
TEMPLATES = (
    "{}", "a {}", "a photo of a {}", "a close-up photo of a {}", "a photo of the {}", "a cropped photo of a {}",
    "a good photo of a {}", "a bright photo of a {}", "a photo of one {}", "a rendering of a {}",
    "a close-up photo of the {}", "a cropped photo of the {}", "a good photo of the {}",
)
DEFAULT_CAPTION = "a photo of a person"
_STAGE_WHAT = {1: "aligned faces with the W+ of the whole crop", 2: "in-the-wild photos with face masks and whitened W+"}


def _bad(path: Path, why: str) -> InvalidInput:
    return InvalidInput(f"The training dataset {path} {why}.",
                        "Build it with `wplus dataset build PHOTOS -o DATA --stage N` (it resumes where it stopped).")


def read_info(folder: str | Path) -> dict[str, Any]:
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInput(f"The training dataset folder {root} does not exist.",
                           "Build one with `wplus dataset build PHOTOS -o DATA --stage N`.")
    try:
        info = json.loads((root / INFO).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _bad(root, f"has no {INFO} (not a dataset folder)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise _bad(root, f"has an unreadable {INFO} ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("stage") not in (1, 2):
        raise _bad(root, f"has an {INFO} that is not a W+ training dataset description")
    return info


def read_manifest(folder: str | Path) -> list[dict[str, Any]]:
    """The items of a dataset (InvalidInput naming the line of a damaged entry)."""
    root = Path(folder)
    path = root / MANIFEST
    if not path.is_file():
        return []
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(root, f"has a damaged {MANIFEST} (line {n}: {exc.msg})") from exc
        if not isinstance(item, dict) or not {"id", "image", "wplus"} <= set(item):
            raise _bad(root, f"has a damaged {MANIFEST} (line {n} lacks id/image/wplus)")
        items.append(item)
    return items


def load_wplus_file(path: Path) -> np.ndarray:
    """A stored W+ as 18×512 float32 (InvalidInput naming the file when it is not 1×18×512 or 18×512)."""
    try:
        w = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"Cannot read the W+ file {path} ({exc}).", "Rebuild the dataset.") from exc
    if w.shape not in ((1, 18, 512), (18, 512)) or not np.issubdtype(w.dtype, np.floating):
        raise InvalidInput(f"The W+ file {path} has shape {w.shape} {w.dtype}; W+ codes are 1×18×512 floats.",
                           "Rebuild the dataset with `wplus dataset build` (e4e writes 1×18×512).")
    w = w.reshape(18, 512).astype(np.float32)
    if not np.isfinite(w).all():
        raise InvalidInput(f"The W+ file {path} has NaN or Inf values.", "Rebuild the dataset.")
    return w


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InvalidInput(f"The training image {path} cannot be read (missing or damaged).", "Rebuild the dataset.")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_mask(path: Path) -> np.ndarray:
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise InvalidInput(f"The face mask {path} cannot be read (missing or damaged).", "Rebuild the dataset.")
    return m


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, 1])


# -- stage-2 augmentation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """The random parameters of one wild-image augmentation (REFERENCE.md §6)."""

    angle: float  # degrees, ±10
    scale: float  # 0.8–1.2 (portrait) or 1.0–1.6 (full body)
    border: int  # an OpenCV border mode
    short_side: int  # resolution … resolution·560/512
    crop_u: float  # where the crop lies within the range that keeps the face inside, 0..1
    crop_v: float
    brightness: float  # 0.8–1.2
    contrast: float
    saturation: float


BORDERS = (0, 1, 2, 4)  # cv2 BORDER_CONSTANT, REPLICATE, REFLECT, REFLECT_101


def draw_augmentation(rng: np.random.Generator, resolution: int, fullbody: bool = False) -> Augmentation:
    lo, hi = (1.0, 1.6) if fullbody else (0.8, 1.2)
    return Augmentation(
        angle=float(rng.uniform(-10.0, 10.0)), scale=float(rng.uniform(lo, hi)),
        border=int(BORDERS[rng.integers(len(BORDERS))]),
        short_side=int(rng.integers(resolution, round(resolution * STORED_SHORT_SIDE / 512) + 1)),
        crop_u=float(rng.random()), crop_v=float(rng.random()),
        brightness=float(rng.uniform(0.8, 1.2)), contrast=float(rng.uniform(0.8, 1.2)),
        saturation=float(rng.uniform(0.8, 1.2)),
    )


def mask_kernel_sizes(face_area: float, image_short_side: int) -> tuple[int, int]:
    """Erosion and blur sizes from the face area, in the official ranges (erode 10–180, blur 10–81 px at 512).

    The official code sizes both by the face area; the exact formula is not in the reference. Here both grow
    with the face's side √area (erode √A/10, blur √A/5, odd), clipped to the official ranges scaled to the
    image (so a 64² test image gets proportionally small kernels).
    """
    f = image_short_side / 512.0
    side = math.sqrt(max(face_area, 0.0))
    erode = int(np.clip(round(side / 10.0), max(1, round(10 * f)), max(1, round(180 * f))))
    blur = int(np.clip(round(side / 5.0), max(1, round(10 * f)), max(1, round(81 * f))))
    return erode, blur | 1


def soften_mask(mask: np.ndarray, face_area: float) -> np.ndarray:
    """Erode with a square kernel and Gaussian-blur (sizes from the face area); float32 in [0, 1]."""
    import cv2

    erode, blur = mask_kernel_sizes(face_area, min(mask.shape[:2]))
    m = cv2.erode(mask, np.ones((erode, erode), np.uint8))
    m = cv2.GaussianBlur(m, (blur, blur), 0)
    return (m.astype(np.float32) / 255.0).clip(0.0, 1.0)


def augment_wild(image: np.ndarray, mask: np.ndarray, box: Sequence[float], aug: Augmentation,
                 resolution: int, fullbody: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rotate/scale about (w/2, h/4) (full body: h/12), resize to the short side, crop resolution² keeping the
    face box inside, colour-jitter. Returns (RGB uint8 R×R×3, mask float32 R×R in [0, 1])."""
    import cv2

    h, w = image.shape[:2]
    centre = (w / 2.0, h / (12.0 if fullbody else 4.0))
    mat = cv2.getRotationMatrix2D(centre, aug.angle, aug.scale)
    img = cv2.warpAffine(image, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=aug.border)
    msk = cv2.warpAffine(mask, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ mat.T
    k = aug.short_side / min(h, w)
    nw, nh = max(resolution, round(w * k)), max(resolution, round(h * k))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    msk = cv2.resize(msk, (nw, nh), interpolation=cv2.INTER_LINEAR)
    fx0, fy0 = corners[:, 0].min() * nw / w, corners[:, 1].min() * nh / h
    fx1, fy1 = corners[:, 0].max() * nw / w, corners[:, 1].max() * nh / h

    def start(lo_face: float, hi_face: float, size: int, u: float) -> int:
        lo = int(np.clip(math.ceil(hi_face) - resolution, 0, size - resolution))
        hi = int(np.clip(math.floor(lo_face), 0, size - resolution))
        if hi < lo:  # the face is larger than the crop: centre on it
            return int(np.clip(round((lo_face + hi_face - resolution) / 2), 0, size - resolution))
        return lo + round(u * (hi - lo))

    cx, cy = start(fx0, fx1, nw, aug.crop_u), start(fy0, fy1, nh, aug.crop_v)
    img = img[cy:cy + resolution, cx:cx + resolution].astype(np.float32)
    msk = msk[cy:cy + resolution, cx:cx + resolution]
    img = img * aug.brightness
    img = (img - img.mean()) * aug.contrast + img.mean()
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = (img - grey[..., None]) * aug.saturation + grey[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8), msk.astype(np.float32).clip(0.0, 1.0)


# -- the dataset ---------------------------------------------------------------------------------------


class TrainDataset:
    """Items of a dataset folder for one stage; `get(index, epoch)` is deterministic given the seed.

    Raises (at construction): InvalidInput for a missing/empty/damaged dataset, a dataset of the other stage
    (naming both), a missing file or a W+ of the wrong shape.
    """

    def __init__(self, folder: str | Path, stage: int, resolution: int, seed: int = 0) -> None:
        self.root = Path(folder)
        info = read_info(self.root)
        if info["stage"] != stage:
            raise InvalidInput(
                f"{self.root} is a stage-{info['stage']} dataset ({_STAGE_WHAT[info['stage']]}), but stage {stage} "
                f"needs {_STAGE_WHAT[stage]}.",
                f"Build a stage-{stage} dataset with `wplus dataset build PHOTOS -o DATA --stage {stage}`.",
            )
        self.items = read_manifest(self.root)
        if not self.items:
            raise _bad(self.root, "has no items (every photo failed or the build did not run; see report.json)")
        self.stage, self.resolution, self.seed = stage, resolution, seed
        for item in self.items:
            for key in ("image", "wplus") + (("mask",) if stage == 2 else ()):
                if key not in item:
                    raise _bad(self.root, f"item {item['id']} has no '{key}'")
                if not (self.root / item[key]).is_file():
                    raise _bad(self.root, f"lacks the file {item[key]} of item {item['id']}")
            load_wplus_file(self.root / item["wplus"])

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int, epoch: int) -> dict[str, Any]:
        import cv2

        item = self.items[index]
        rng = item_rng(self.seed, epoch, index)
        r = self.resolution
        wplus = load_wplus_file(self.root / item["wplus"])
        image = _read_rgb(self.root / item["image"])
        out: dict[str, Any] = {"wplus": wplus, "id": item["id"]}
        if self.stage == 1:
            if image.shape[:2] != (r, r):
                image = cv2.resize(image, (r, r), interpolation=cv2.INTER_AREA)
            out["caption"] = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format("face")
        else:
            fullbody = item.get("framing") == "fullbody"
            mask = soften_mask(_read_mask(self.root / item["mask"]), float(item.get("face_area", 0.0)))
            h, w = image.shape[:2]
            box = item.get("face_box") or [0, 0, w, h]
            aug = draw_augmentation(rng, r, fullbody)
            image, out_mask = augment_wild(image, mask, box, aug, r, fullbody)
            out["mask"] = out_mask[None]
            captions = [c for c in str(item.get("caption") or "").splitlines() if c.strip()] or [DEFAULT_CAPTION]
            out["caption"] = captions[int(rng.integers(len(captions)))].strip()
        out["pixel_values"] = (image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
        return out


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0]).permutation(n)


def global_positions(n: int, seed: int, positions: Sequence[int]) -> list[tuple[int, int]]:
    """(item index, epoch) at each position of the endless shuffled stream of items."""
    out = []
    orders: dict[int, np.ndarray] = {}
    for pos in positions:
        epoch, k = divmod(int(pos), n)
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        out.append((int(orders[epoch][k]), epoch))
    return out


class StreamSampler:
    """Batches of (index, epoch, position) for one process: micro-step m holds positions m·G … m·G+G−1 of the
    stream (G = global batch), of which process r takes [r·B, (r+1)·B)."""

    def __init__(self, n: int, seed: int, batch: int, rank: int, world: int, start_micro: int, end_micro: int) -> None:
        self.n, self.seed, self.batch, self.rank, self.world = n, seed, batch, rank, world
        self.start, self.end = start_micro, end_micro

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        g = self.batch * self.world
        for m in range(self.start, self.end):
            pos = [m * g + self.rank * self.batch + i for i in range(self.batch)]
            yield [(i, e, p) for (i, e), p in zip(global_positions(self.n, self.seed, pos), pos, strict=True)]

    def __len__(self) -> int:
        return self.end - self.start


class TorchItems:
    """A map-style torch dataset over (index, epoch, position) keys."""

    def __init__(self, ds: TrainDataset) -> None:
        self.ds = ds

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        index, epoch, pos = key
        out = self.ds.get(index, epoch)
        out["position"] = pos
        return out

    def __len__(self) -> int:
        return len(self.ds)


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "pixel_values": torch.from_numpy(np.stack([it["pixel_values"] for it in items])),
        "wplus": torch.from_numpy(np.stack([it["wplus"] for it in items])),
        "caption": [it["caption"] for it in items],
        "position": [it["position"] for it in items],
    }
    if "mask" in items[0]:
        out["mask"] = torch.from_numpy(np.stack([it["mask"] for it in items]))
    return out
