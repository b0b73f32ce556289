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

from engine.api import (
    WPLUS_SHAPE,
    ControlKind,
    ControlSpec,
    EditState,
    GenerateRequest,
    LoraSpec,
    Result,
    Scheduler,
)
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
            "controls": [_control_json(c) for c in req.controls],
            "loras": [_lora_json(lo, result) for lo in req.loras],
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
        *((f"ControlNet {i}", _a1111_control(c)) for i, c in enumerate(req.controls)),
        ("Lora hashes", _quoted(", ".join(f"{_lora_name(lo)}: {models.get('lora:' + _lora_name(lo), '')[:10]}"
                                          for lo in req.loras))),
        ("Version", f"wplus-studio {_app_version()}"),
    ]
    edits = ", ".join(f"{k} {v:g}" for k, v in req.edits.as_dict().items())
    line = ", ".join(f"{k}: {v}" for k, v in fields if v != "")
    if edits:
        line += f', W+ edits: "{edits}"'
    return f"{req.prompt}{lora_tags(req.loras)}\nNegative prompt: {req.negative_prompt}\n{line}"


def _lora_name(lora: LoraSpec) -> str:
    return Path(lora.path).stem


def _quoted(text: str) -> str:
    return f'"{text}"' if text else ""


def lora_tags(loras: tuple[LoraSpec, ...]) -> str:
    """A1111's prompt tags: ` <lora:NAME:WEIGHT>`, or `<lora:NAME:TEXT:UNET>` when the two weights differ."""
    tags = []
    for lo in loras:
        w = f"{lo.weight:g}" if lo.text == lo.weight else f"{lo.text:g}:{lo.weight:g}"
        tags.append(f" <lora:{_lora_name(lo)}:{w}>")
    return "".join(tags)


def parse_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float, float]]]:
    """Split A1111 `<lora:NAME:TE[:UNET]>` tags off a prompt: (clean prompt, [(name, unet, text weight)])."""
    import re

    found: list[tuple[str, float, float]] = []

    def take(m: re.Match[str]) -> str:
        parts = m.group(1).split(":")
        try:
            te = float(parts[1]) if len(parts) > 1 else 1.0
            unet = float(parts[2]) if len(parts) > 2 else te
        except ValueError:
            return m.group(0)
        found.append((parts[0], unet, te))
        return ""

    clean = re.sub(r"\s*<lora:([^>]+)>", take, prompt)
    return clean, found


def _a1111_control(c: ControlSpec) -> str:
    """The sd-webui-controlnet unit text A1111 users know."""
    name = Path(c.model).name
    return (f'"Module: {c.kind.value}, Model: {Path(name).stem if Path(c.model).suffix else name}, '
            f'Weight: {c.scale:g}, Guidance Start: {c.start:g}, Guidance End: {c.end:g}"')


def _png_b64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _control_json(c: ControlSpec) -> dict[str, Any]:
    # The control image itself is kept (a skeleton or edge map compresses to a few kB) so dropping the PNG
    # restores the exact conditioning; its digest lets a reader check it.
    return {"model": c.model, "scale": c.scale, "start": c.start, "end": c.end, "kind": c.kind.value,
            "image_png": _png_b64(c.image), "image_sha256": c.image_digest}


def _control_from_json(obj: dict[str, Any]) -> ControlSpec:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(obj["image_png"], validate=True))) as img:
            image = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InvalidInput("The control image in the metadata is damaged.") from exc
    return ControlSpec(model=str(obj["model"]), image=image, scale=float(obj["scale"]), start=float(obj["start"]),
                       end=float(obj["end"]), kind=ControlKind(obj.get("kind", "image")))


def _lora_json(lo: LoraSpec, result: Result) -> dict[str, Any]:
    return {"path": lo.path, "name": _lora_name(lo), "weight": lo.weight, "text_weight": lo.text_weight,
            "hash": dict(result.model_hashes).get(f"lora:{_lora_name(lo)}", "")}


def _lora_from_json(obj: dict[str, Any]) -> LoraSpec:
    tw = obj.get("text_weight")
    return LoraSpec(path=str(obj["path"]), weight=float(obj["weight"]), text_weight=None if tw is None else float(tw))


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
            controls=tuple(_control_from_json(c) for c in r.get("controls") or ()),
            loras=tuple(_lora_from_json(lo) for lo in r.get("loras") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"The W+ Studio metadata of {Path(path).name} is incomplete ({exc}).") from exc
