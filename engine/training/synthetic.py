"""Small synthetic training datasets in the real format (for tests, benches and the docs' learning numbers).

Each item's W+ decides its picture (colours and a pattern inside an elliptic "face"), so an adapter can learn
to use W+; the background of stage-2 items depends only on the item's own seed, never on W+.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.training.data import FORMAT, INFO, MANIFEST, VERSION


def _face(w: np.ndarray, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    c = np.tanh(w[0, :3]) * 100 + 128
    c2 = np.tanh(w[9, :3]) * 100 + 128
    f = 2 + 4 * abs(np.tanh(w[4, 0]))
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xx + yy * np.tanh(w[2, 1])))
    return (c[None, None] * stripes[..., None] + c2[None, None] * (1 - stripes[..., None])).astype(np.float32)


def write_synthetic_dataset(folder: str | Path, stage: int, n: int, size: int = 64, seed: int = 0) -> Path:
    """Write `n` items of a stage-1 (aligned faces, size²) or stage-2 (wild, short side size·560/512) dataset."""
    import cv2

    root = Path(folder)
    for sub in ("images", "wplus", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        w = (0.5 * rng.standard_normal((1, 18, 512))).astype(np.float32)
        item_id = f"s{seed}-{i:05d}"
        np.save(root / "wplus" / f"{item_id}.npy", w)
        item: dict[str, object] = {"id": item_id, "source": f"synthetic:{seed}:{i}", "sha256": "",
                                   "wplus": f"wplus/{item_id}.npy", "caption": "a photo of a person"}
        if stage == 1:
            img = _face(w[0], size)
            item.update(image=f"images/{item_id}.png", face_box=[0, 0, size, size])
        else:
            hh, ww = round(size * 560 / 512), round(size * 1.25)
            bg = np.zeros((hh, ww, 3), np.float32) + rng.uniform(30, 220, 3)
            bg += rng.normal(0, 20, (hh, ww, 3))
            cy, cx, r = hh * 0.35, ww * 0.5, size * 0.22
            yy, xx = np.mgrid[0:hh, 0:ww]
            mask = (((yy - cy) / (1.2 * r)) ** 2 + ((xx - cx) / r) ** 2 <= 1.0)
            face = cv2.resize(_face(w[0], size), (ww, hh))
            img = np.where(mask[..., None], face, bg)
            cv2.imwrite(str(root / "masks" / f"{item_id}.png"), (mask * 255).astype(np.uint8))
            item.update(image=f"images/{item_id}.png", mask=f"masks/{item_id}.png",
                        face_box=[float(cx - r), float(cy - 1.2 * r), float(cx + r), float(cy + 1.2 * r)],
                        face_area=float(mask.sum()), framing="portrait",
                        caption="a photo of a person in a room\na person, outdoors")
        cv2.imwrite(str(root / str(item["image"])), cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8),
                                                                  cv2.COLOR_RGB2BGR))
        lines.append(json.dumps(item))
    (root / MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / INFO).write_text(json.dumps({"format": FORMAT, "version": VERSION, "stage": stage}), encoding="utf-8")
    return root
