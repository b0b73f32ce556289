"""PNG metadata: every saved image carries what is needed to regenerate it.

Two text chunks are written:

* `parameters` — the A1111-style text other tools (and people) read: prompt, negative prompt and a line
  `Steps: …, Sampler: …, CFG scale: …, Seed: …, Size: WxH, Model: …, …`;
* `wplus-studio` — JSON with the full request of this one image (its own seed), the edits, the
  *unedited* W+ (base64 float32, so the edits stay adjustable), the identity name, model file
  fingerprints and the app version. `read_request` turns it back into a `GenerateRequest`.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.api import WPLUS_SHAPE, EditState, GenerateRequest, Result, Scheduler
from engine.errors import ImageUnreadable, InvalidInput

CHUNK_KEY = "wplus-studio"
FORMAT = "wplus-studio/1"
A1111_SAMPLERS = {
    Scheduler.EULER: "Euler",
    Scheduler.DDIM: "DDIM",
    Scheduler.DPMPP_2M_KARRAS: "DPM++ 2M Karras",
    Scheduler.EULER_ANCESTRAL: "Euler a",
}


def _app_version() -> str:
    from engine import __version__

    return __version__


def encode_wplus(wplus: np.ndarray) -> dict[str, Any]:
    arr = np.ascontiguousarray(wplus, dtype="<f4")
    return {"dtype": "float32", "shape": list(arr.shape), "base64": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_wplus(obj: dict[str, Any]) -> np.ndarray:
    try:
        raw = base64.b64decode(obj["base64"], validate=True)
        arr = np.frombuffer(raw, dtype="<f4").reshape(obj.get("shape", WPLUS_SHAPE))
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidInput("The image's W+ metadata is damaged.", "Re-encode the face instead.") from exc
    return arr.astype(np.float32)


def request_metadata(result: Result, index: int) -> dict[str, Any]:
    """The JSON object stored in the `wplus-studio` chunk for image `index` of `result`."""
    req = result.request
    seed = result.seeds[index] if index < len(result.seeds) else req.seed + index
    return {
        "format": FORMAT,
        "app_version": _app_version(),
        "request": {
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "seed": int(seed),
            "steps": req.steps,
            "guidance": req.guidance,
            "scheduler": str(req.scheduler),
            "scale": req.scale,
            "start_ratio": req.start_ratio,
            "width": req.width,
            "height": req.height,
            "freeu": req.freeu,
            "edits": req.edits.as_dict(),
            "identity_name": req.identity_name,
        },
        "variation": {"index": index, "base_seed": req.seed, "of": req.n},
        "wplus": encode_wplus(req.wplus) if req.wplus is not None else None,
        "models": dict(result.model_hashes),
        "warnings": list(result.warnings),
    }


def a1111_parameters(result: Result, index: int) -> str:
    """The A1111-style `parameters` text for image `index`."""
    req = result.request
    seed = result.seeds[index] if index < len(result.seeds) else req.seed + index
    models = dict(result.model_hashes)
    # The UNet's file identifies a diffusers folder; a single-file checkpoint has one entry anyway.
    sd = sorted((k for k in models if not k.startswith(("adapter:", "vae:"))), key=lambda k: "/unet/" not in k)
    fields = [
        ("Steps", req.steps),
        ("Sampler", A1111_SAMPLERS.get(req.scheduler, str(req.scheduler))),
        ("CFG scale", req.guidance),
        ("Seed", seed),
        ("Size", f"{req.width}x{req.height}"),
        ("Model hash", models[sd[0]][:10] if sd else ""),
        ("Model", sd[0].split("/")[0] if sd else ""),
        ("W+ scale", req.scale),
        ("W+ start", f"{req.start_ratio:g}%"),
        ("W+ identity", req.identity_name or ("none" if req.wplus is None else "unnamed")),
        ("FreeU", "on" if req.freeu else "off"),
        ("Version", f"wplus-studio {_app_version()}"),
    ]
    edits = ", ".join(f"{k} {v:g}" for k, v in req.edits.as_dict().items())
    line = ", ".join(f"{k}: {v}" for k, v in fields if v != "")
    if edits:
        line += f', W+ edits: "{edits}"'
    return f"{req.prompt}\nNegative prompt: {req.negative_prompt}\n{line}"


def png_bytes(image: np.ndarray, result: Result, index: int) -> bytes:
    """Encode `image` (uint8 H×W×3) as PNG with both metadata chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInput(f"Expected a uint8 H×W×3 image, got {arr.dtype} {arr.shape}.")
    info = PngInfo()
    info.add_text("parameters", a1111_parameters(result, index))
    info.add_itxt(CHUNK_KEY, json.dumps(request_metadata(result, index), separators=(",", ":")), zip=True)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(path: str | os.PathLike[str], image: np.ndarray, result: Result, index: int) -> Path:
    """Write image `index` of `result` as a PNG with its metadata, atomically (no partial file on failure).

    Raises:
        StorageError: disk full or no permission.
        InvalidInput: not a uint8 RGB image.
    """
    from engine.fileio import atomic_write_bytes

    data = png_bytes(image, result, index)
    atomic_write_bytes(path, data)
    return Path(path)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The `wplus-studio` JSON of a PNG.

    Raises:
        ImageUnreadable: not a readable image.
        InvalidInput: the image carries no (or damaged) W+ Studio metadata.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as img:
            text = dict(getattr(img, "text", {}) or {})
    except FileNotFoundError as exc:
        raise ImageUnreadable(f"Image not found: {p}.") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageUnreadable(f"{p.name} is not a readable image ({exc}).") from exc
    if CHUNK_KEY not in text:
        hint = "It has A1111 'parameters' text, which lacks the W+ identity." if "parameters" in text else ""
        raise InvalidInput(
            f"{p.name} has no W+ Studio metadata, so its settings cannot be restored.",
            (hint + " " if hint else "") + "Open a PNG saved by W+ Studio (`wplus generate` or the app).",
        )
    try:
        meta = json.loads(text[CHUNK_KEY])
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"The W+ Studio metadata of {p.name} is damaged.") from exc
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("wplus-studio/"):
        raise InvalidInput(f"The W+ Studio metadata of {p.name} has an unknown format.")
    return meta


def read_request(path: str | os.PathLike[str]) -> GenerateRequest:
    """The request that regenerates the image saved at `path` (n = 1, that image's own seed).

    Raises:
        ImageUnreadable, InvalidInput: as `read_metadata`; InvalidInput also for invalid values.
    """
    meta = read_metadata(path)
    r = meta.get("request") or {}
    try:
        wplus = decode_wplus(meta["wplus"]) if meta.get("wplus") else None
        return GenerateRequest(
            prompt=str(r["prompt"]),
            negative_prompt=str(r["negative_prompt"]),
            seed=int(r["seed"]),
            steps=int(r["steps"]),
            guidance=float(r["guidance"]),
            scheduler=Scheduler(r["scheduler"]),
            scale=float(r["scale"]),
            start_ratio=float(r["start_ratio"]),
            width=int(r["width"]),
            height=int(r["height"]),
            n=1,
            freeu=bool(r["freeu"]),
            wplus=wplus,
            edits=EditState.from_mapping({str(k): float(v) for k, v in (r.get("edits") or {}).items()}),
            identity_name=str(r.get("identity_name", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"The W+ Studio metadata of {Path(path).name} is incomplete ({exc}).") from exc
