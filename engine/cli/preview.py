"""`wplus preview`: render a W+ code with the e4e checkpoint's StyleGAN2 generator (the instant face preview)."""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

from engine.cli.common import add_backend_argument
from engine.errors import InvalidInput

SIZES = (256, 512, 1024)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preview",
        help="render a W+ as a face with the StyleGAN2 generator inside the e4e checkpoint",
        description=(
            "Render a W+ code (1×18×512) with the StyleGAN2-FFHQ generator stored in e4e_ffhq_encode.pt. "
            "--size 256 uses the fast reduced path (the 256² level of the generator: a coarse preview); "
            "512 and 1024 render the full 1024² image (resized like the official preview). "
            "Add --full to get the official 256² reconstruction preview (full image, downscaled)."
        ),
    )
    p.add_argument("wplus", help="W+ file: .npy (1×18×512 or 18×512) or an official .pth/.pt tensor")
    p.add_argument("-o", "--output", required=True,
                   help="image to write (.png, .jpg, .webp; missing folders are created)")
    p.add_argument("--size", type=int, choices=SIZES, default=256, help="output size (default 256)")
    p.add_argument("--full", action="store_true", help="with --size 256: downscale the full 1024² image")
    p.add_argument("--e4e", default="", help="e4e checkpoint (default: e4e_ffhq_encode.* in the models folder)")
    add_backend_argument(p)
    p.set_defaults(func=run)


def load_wplus_file(path: str | Path) -> np.ndarray:
    """Read a W+ from `.npy` or an official `.pth`/`.pt` tensor file and validate it (1×18×512, finite).

    Raises:
        InvalidInput: unreadable file, unsupported type, wrong shape, NaN/Inf.
        UnsafeCheckpoint: a `.pth` that would run code when unpickled.
    """
    from engine.api import validate_wplus

    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"W+ file not found: {p}.", "Give a .npy or .pth file written by `wplus encode`.")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InvalidInput(f"{p} is not a readable .npy array ({exc}).") from exc
    elif suffix in (".pth", ".pt"):
        from engine.errors import ModelCorrupt, UnsafeCheckpoint
        from engine.models.safe_load import load_tensor_file

        try:
            tensor = load_tensor_file(p)
        except UnsafeCheckpoint:
            raise
        except ModelCorrupt as exc:
            raise InvalidInput(f"{p} does not hold a W+ tensor: {exc.user_message}") from exc
        arr = tensor.detach().to("cpu").float().numpy()
    else:
        raise InvalidInput(f"{p} has an unsupported W+ file type '{p.suffix}'.", "Use .npy or .pth.")
    return validate_wplus(arr, what=f"The W+ in {p.name}")


def encode_image(rgb: np.ndarray, path: str | Path) -> bytes:
    """Encode an RGB uint8 image in the format named by the file suffix (PNG, JPEG, WebP)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt not in ("PNG", "JPEG", "WEBP"):
        raise InvalidInput(f"Cannot write '{Path(path).suffix}' images.", "Use .png, .jpg or .webp.")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    import sys

    from engine.cli.common import config_from_args
    from engine.fileio import atomic_write_bytes
    from engine.models.service import ModelService
    from engine.pipeline.preview_backend import open_preview

    wplus = load_wplus_file(args.wplus)
    encode_image(np.zeros((1, 1, 3), np.uint8), args.output)  # refuse a bad suffix before the slow part
    config = config_from_args(args, e4e=args.e4e)
    t0 = time.perf_counter()
    models = ModelService(config)
    preview, choice = open_preview(config, lambda: models.load("stylegan_preview"))
    if choice.fell_back:
        print(f"warning: {choice.message}", file=sys.stderr)
    t1 = time.perf_counter()
    rgb = preview.render(wplus, args.size, full=args.full)
    t2 = time.perf_counter()
    atomic_write_bytes(args.output, encode_image(rgb, args.output))
    path_kind = "full 1024² image, resized" if args.size != 256 or args.full else "reduced 256² path"
    print(f"wrote {args.output} ({args.size}×{args.size}, {path_kind}; load {t1 - t0:.1f} s, render {t2 - t1:.2f} s)")
    return 0
