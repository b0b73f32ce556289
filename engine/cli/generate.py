"""`wplus generate`: SD1.5 + W+ adapter images from a W+ file, a face photo or a saved PNG's metadata."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.api import (
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_PROMPT,
    ControlKind,
    ControlSpec,
    EditState,
    GenerateRequest,
    LoraSpec,
    Scheduler,
)
from engine.cli.common import add_backend_argument
from engine.errors import InvalidInput, ModelMissing


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate images with SD1.5 and the W+ adapter",
        description=(
            "Generate images of a person (a W+ code, a face photo, or the settings saved in a W+ Studio PNG) "
            "with Stable Diffusion 1.5 and the W+ adapter. Each image is written as PNG with its settings. "
            "Paths are relative to the current directory; models you do not name come from the models folder."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--wplus", metavar="W", help="W+ code: .npy (1×18×512 or 18×512) or an official .pth")
    src.add_argument("--image", metavar="FACE", help="a face photo, encoded with the face chain (e4e)")
    src.add_argument("--from-png", metavar="PNG", help="re-render an image saved by W+ Studio from its metadata")
    p.add_argument("--aligned", action="store_true", help="--image is already an FFHQ-aligned face")
    p.add_argument("--restore", action="store_true",
                   help="--image: restore the face with PSFRGAN before encoding (the official -s)")
    p.add_argument("--model", help="SD1.5 diffusers folder or single .safetensors (default: sd15/ in the models folder)")
    p.add_argument("--adapter", help="W+ adapter file (default: wplus_adapter.* in the models folder)")
    p.add_argument("--vae", help="separate VAE folder or file (default: vae/sd-vae-ft-mse in the models folder, if present)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--negative", default=DEFAULT_NEGATIVE_PROMPT, help="negative prompt (default: the official one)")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--scheduler", default=Scheduler.EULER.value, choices=[s.value for s in Scheduler])
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scale", type=float, default=1.0, help="identity strength (W+ residual scale)")
    p.add_argument("--start-ratio", type=float, default=20.0,
                   help="delayed conditioning: percent of steps before the identity is applied (default 20)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--n", type=int, default=1, help="variations (seeds seed, seed+1, …)")
    p.add_argument("--freeu", action="store_true", help="FreeU with the official factors")
    p.add_argument("--control", action="append", default=[], metavar="IMAGE",
                   help="a control image (pose skeleton, edges, …) for the --controlnet of the same position "
                        "(repeatable)")
    p.add_argument("--controlnet", action="append", default=[], metavar="PATH",
                   help="an SD1.5 ControlNet: diffusers folder or single .safetensors (repeatable, one per --control)")
    p.add_argument("--control-scale", action="append", type=float, default=[], metavar="S",
                   help="ControlNet strength (default 1.0; one value for all, or one per --control)")
    p.add_argument("--control-start", action="append", type=float, default=[], metavar="F",
                   help="fraction of the steps where the ControlNet starts acting (default 0)")
    p.add_argument("--control-end", action="append", type=float, default=[], metavar="F",
                   help="fraction of the steps where it stops (default 1)")
    p.add_argument("--control-kind", action="append", default=[], choices=[k.value for k in ControlKind],
                   help="what the control image is, for the metadata (default image)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT[:TEXT_WEIGHT]]",
                   help="an SD1.5 LoRA (kohya/A1111 or diffusers layout) with its weight, default 1 (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="EDIT=V", help="an edit slider value (repeatable)")
    p.add_argument("--name", default="", help="identity name stored in the metadata")
    p.add_argument("--dtype", default="auto", help="float32, float16, bfloat16 or auto")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True,
                   help="output PNG; with --n > 1: OUT-0.png, OUT-1.png, … (missing folders are created)")
    add_backend_argument(p)
    p.set_defaults(func=run)


def _parse_edits(items: list[str]) -> EditState:
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            values[name.strip()] = float(value)
        except ValueError:
            raise InvalidInput(f"--set expects EDIT=VALUE (e.g. smile=1.5), got '{item}'.") from None
    return EditState.from_mapping(values)


def _user_path(path: str) -> str:
    """A user's path, relative to the current directory, made absolute (it is stored in metadata)."""
    return str(Path(path).expanduser().absolute())


def parse_lora_arg(item: str) -> LoraSpec:
    """`PATH[:WEIGHT[:TEXT_WEIGHT]]`; a colon that is part of the path (C:\\…) stays in it."""
    parts = item.split(":")
    weights: list[float] = []
    while len(parts) > 1 and len(weights) < 2:
        try:
            weights.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    path = ":".join(parts)
    if not path:
        raise InvalidInput(f"--lora expects PATH[:WEIGHT], got '{item}'.")
    return LoraSpec(_user_path(path), *(weights or [1.0]))


def _per_control(values: list[Any], n: int, name: str, default: Any) -> list[Any]:
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise InvalidInput(f"{name} was given {len(values)} times for {n} control images: give it once or once each.")
    return values


def parse_controls(args: argparse.Namespace) -> tuple[ControlSpec, ...]:
    """The ControlSpecs of `--control IMAGE --controlnet PATH …` pairs (in order)."""
    from engine.images import load_image

    images, nets = list(args.control), list(args.controlnet)
    if len(images) != len(nets):
        raise InvalidInput(
            f"--control and --controlnet come in pairs: got {len(images)} control image(s) and {len(nets)} "
            "ControlNet(s).", "Give one --controlnet PATH for each --control IMAGE.")
    n = len(images)
    scales = _per_control(args.control_scale, n, "--control-scale", 1.0)
    starts = _per_control(args.control_start, n, "--control-start", 0.0)
    ends = _per_control(args.control_end, n, "--control-end", 1.0)
    kinds = _per_control(args.control_kind, n, "--control-kind", ControlKind.IMAGE.value)
    specs = []
    for i in range(n):
        net = Path(_user_path(nets[i]))
        if not net.exists():
            raise ModelMissing(f"ControlNet not found: {net}.", "Check the --controlnet path (relative to the "
                               "current folder).")
        specs.append(ControlSpec(str(net), load_image(_user_path(images[i])), scale=scales[i], start=starts[i],
                                 end=ends[i], kind=ControlKind(kinds[i])))
    return tuple(specs)


def _load_wplus(path: str) -> Any:
    import numpy as np

    p = Path(path)
    if p.suffix.lower() == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{p} is not a readable .npy W+ file ({exc}).") from exc
    from engine.models.safe_load import load_tensor_file

    return load_tensor_file(p).float().numpy()


def output_paths(out: str, n: int) -> list[Path]:
    """OUT for one image; OUT-0.png, OUT-1.png, … for several."""
    p = Path(out)
    if p.suffix.lower() != ".png":
        p = p.with_suffix(p.suffix + ".png") if p.suffix else p.with_suffix(".png")
    if n == 1:
        return [p]
    return [p.with_name(f"{p.stem}-{k}.png") for k in range(n)]


def run(args: argparse.Namespace) -> int:
    from engine.cancel import CancelToken
    from engine.cli.common import config_from_args
    from engine.pipeline.metadata import read_request, save_png
    from engine.session import Session

    config = config_from_args(args, sd_model=args.model or "", adapter=args.adapter or "", vae=args.vae or "")
    if args.dtype != "auto":
        from dataclasses import replace

        config = replace(config, dtype=args.dtype)
    session = Session(config)
    try:
        if args.from_png:
            request = read_request(args.from_png)
        else:
            wplus, name = None, args.name
            if args.wplus:
                wplus = _load_wplus(args.wplus)
                name = name or Path(args.wplus).stem
            elif args.image:
                from engine.images import load_image

                identity = session.encode_identity(load_image(args.image), name=name or Path(args.image).stem,
                                                   aligned=args.aligned, restore=args.restore)
                wplus, name = identity.wplus, identity.name
                for w in identity.info.get("warnings", ()):
                    print(f"warning: {w}", file=sys.stderr)
            if args.restore and not args.image:
                raise InvalidInput("--restore applies to --image (a face photo to encode).")
            edits = _parse_edits(args.set)
            if wplus is None and not edits.is_identity:
                raise InvalidInput("--set needs an identity (--wplus or --image).")
            request = GenerateRequest(
                prompt=args.prompt, negative_prompt=args.negative, seed=args.seed, steps=args.steps,
                guidance=args.guidance, scheduler=Scheduler(args.scheduler), scale=args.scale,
                start_ratio=args.start_ratio, width=args.width, height=args.height, n=args.n, freeu=args.freeu,
                wplus=wplus, edits=edits, identity_name=name, controls=parse_controls(args),
                loras=tuple(parse_lora_arg(item) for item in args.lora),
            )

        def show(p: Any) -> None:
            if not args.quiet and p.stage == "denoise":
                print(f"\rstep {p.step}/{p.total}  {p.elapsed_s:.1f} s", end="", file=sys.stderr, flush=True)

        result = session.render(request, CancelToken(), show)
        if not args.quiet:
            print(file=sys.stderr)
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        for k, path in enumerate(output_paths(args.out, request.n)):
            save_png(path, result.images[k], result, k)
            print(path)
    finally:
        session.close()
    return 0
