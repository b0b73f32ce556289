"""`python -m export` / `wplus-export`: ONNX exports, their verification, TensorRT engines, status.

    python -m export onnx   --models-dir models [--components unet,vae_decoder] [--profile dynamic] [--precision fp16]
    python -m export verify --models-dir models [--onnx-dir models/onnx]
    python -m export trt    --onnx-dir models/onnx [--cache-dir …] [--precision fp16]
    python -m export check  --onnx-dir models/onnx
    python -m export controls --models-dir models [--controlnet PATH]… [--control-unet] [--freeu] [--lora PATH[:W]]…

Exit codes: 0 ok, 1 failure (an EngineError is printed without a traceback unless --debug), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.errors import EngineError
from export.sources import EXPORTABLE as COMPONENTS

# Optional models: exported only when named with --components (a missing optional file is no failure).
OPTIONAL_COMPONENTS = ("face_restorer",)


def _profile(args: argparse.Namespace):
    from engine.backends.profiles import ShapeProfile

    if args.profile == "static":
        return ShapeProfile.static(args.height, args.width, args.batch)
    return ShapeProfile.dynamic(args.min_side, args.opt_side, args.max_side, args.batch)


def _components(text: str | None) -> list[str]:
    if not text:
        return [c for c in COMPONENTS if c not in OPTIONAL_COMPONENTS]
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in COMPONENTS]
    if bad:
        raise SystemExit(f"error: unknown component(s) {', '.join(bad)}; choose from {', '.join(COMPONENTS)}")
    return names


def _config(args: argparse.Namespace):
    from dataclasses import replace

    from engine.cli.common import config_from_args

    config = config_from_args(args, sd_model=args.sd_model or "", vae=args.vae or "", e4e=args.e4e or "",
                              adapter=args.adapter or "", parser=args.parser or "")
    return replace(config, device="cpu")


def _onnx_dir(args: argparse.Namespace, config=None) -> Path:
    if getattr(args, "onnx_dir", None):
        return Path(args.onnx_dir)
    if config is None:
        config = _config(args)
    return Path(config.models_dir) / "onnx"


def _peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:  # Windows
        return float("nan")


def cmd_onnx(args: argparse.Namespace) -> int:
    import torch

    from export.sources import ComponentLoader
    from export.to_onnx import export_onnx
    from export.verify import verify_onnx

    config = _config(args)
    out = _onnx_dir(args, config)
    profile = _profile(args)
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    loader = ComponentLoader(config, dtype)
    failed = 0
    for component in _components(args.components):
        src = loader.load(component)
        result = export_onnx(component, src.module, out / f"{component}.onnx", profile=profile,
                             precision=args.precision, weights=src.weights, opset=args.opset)
        size = result.info.onnx_size + max(result.info.external_size, 0)
        print(f"{component}: {result.path} ({size / 1e6:.1f} MB, {result.seconds:.1f} s, "
              f"peak RSS {_peak_rss_mb():.0f} MB)")
        if args.verify:
            ref = loader.load(component).module if args.precision == "fp32" else _fp32(config, component)
            for report in verify_onnx(component, ref, result.path):
                for line in report.lines():
                    print("  " + line)
                failed += not report.ok
    return 1 if failed else 0


def _fp32(config, component: str):
    from export.sources import ComponentLoader

    return ComponentLoader(config).load(component).module


def cmd_verify(args: argparse.Namespace) -> int:
    from export.sources import ComponentLoader
    from export.verify import verify_onnx

    config = _config(args)
    onnx_dir = _onnx_dir(args, config)
    loader = ComponentLoader(config)
    failed = 0
    for component in _components(args.components):
        path = onnx_dir / f"{component}.onnx"
        if not path.is_file():
            if args.components:
                print(f"{component}: no export at {path}", file=sys.stderr)
                failed += 1
            continue
        for report in verify_onnx(component, loader.load(component).module, path, seeds=tuple(range(args.seeds))):
            for line in report.lines():
                print(line)
            failed += not report.ok
    return 1 if failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    from engine.backends.artifacts import changed_weight_files, read_artifact

    onnx_dir = _onnx_dir(args)
    bad = 0
    for component in COMPONENTS:
        path = onnx_dir / f"{component}.onnx"
        if not path.exists():
            continue
        try:
            info = read_artifact(path, component, deep=args.deep)
            changed = changed_weight_files(info)
            state = f"STALE ({', '.join(changed)} changed)" if changed else "up to date"
            print(f"{component}: {info.precision}, profile {info.profile.name}, opset {info.opset} — {state}")
            bad += bool(changed)
        except EngineError as exc:
            print(f"{component}: {exc.user_message}")
            bad += 1
    return 1 if bad else 0


def cmd_trt(args: argparse.Namespace) -> int:
    from export.to_trt import build_all

    onnx_dir = _onnx_dir(args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else onnx_dir.parent / "engines"
    results = build_all(onnx_dir, cache_dir, _profile(args), _components(args.components), precision=args.precision,
                        timing_cache=cache_dir / "timing.cache", rebuild=args.rebuild)
    for line in results:
        print(line)
    return 0


def cmd_controls(args: argparse.Namespace) -> int:
    """ControlNet graphs, the residual/FreeU UNet variants and LoRA-set exports (export/controls.py).

    Without --lora the variants go into the ONNX folder itself; with --lora they go, with the set's text
    encoder and plain UNet, into its `loras/<key>/` folder. Every input is checked before the first export.
    """
    from types import SimpleNamespace

    import torch

    from engine.cli.generate import parse_lora_arg
    from engine.errors import InvalidInput, ModelMissing
    from engine.networks.lora import read_lora
    from engine.networks.wplus import WPlusUNet
    from export.controls import export_controlnet, export_lora_set, export_unet_variants, unet_residual_count
    from export.sources import ComponentLoader

    if not (args.controlnet or args.control_unet or args.freeu or args.lora):
        print(args.usage, end="", file=sys.stderr)
        print("error: nothing to export: give --controlnet PATH, --control-unet, --freeu and/or --lora PATH",
              file=sys.stderr)
        return 2
    controlnets = [Path(p).expanduser().absolute() for p in args.controlnet]
    for p in controlnets:
        if not p.exists():
            raise ModelMissing(f"ControlNet not found: {p}.", "Check the --controlnet path (relative to the current folder).")
    loras = [parse_lora_arg(item) for item in args.lora]
    for spec in loras:
        read_lora(spec.path)  # a missing file or another family's LoRA is refused by name, before any export
    config = _config(args)
    out = _onnx_dir(args, config)
    profile = _profile(args)
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    loader = ComponentLoader(config, dtype)
    unet = loader.load("unet")
    n_down = unet_residual_count(unet.module)
    control = n_down if (args.control_unet or controlnets) else None
    if loras:
        te = loader.load("text_encoder")
        folder = export_lora_set(SimpleNamespace(unet=unet.module, text_encoder=te.module), None, loras, out,
                                 profile=profile, precision=args.precision, control_residuals=control,
                                 freeu=args.freeu, weights=unet.weights)
        print(f"LoRA set: {folder}")
    for p in controlnets:
        result = export_controlnet(p, out, profile=profile, precision=args.precision)
        print(f"controlnet {p.name}: {result.path} ({result.seconds:.1f} s)")
        if int(dict(result.info.extra)["n_down"]) != n_down:
            raise InvalidInput(f"The ControlNet {p.name} gives {dict(result.info.extra)['n_down']} residuals; this "
                               f"model's UNet takes {n_down}.", "Use a ControlNet made for this model (SD1.5).")
    if not loras and (control is not None or args.freeu):
        for r in export_unet_variants(WPlusUNet(unet.module), out, profile=profile, precision=args.precision,
                                      weights=unet.weights, control_residuals=control, freeu=args.freeu):
            print(f"{r.path.stem}: {r.path} ({r.seconds:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wplus-export", description="Export W+ Studio components to ONNX and "
                                     "TensorRT, and check exports against the PyTorch models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks, exporter and library logs (always in the log file)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def models_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--models-dir", help="models folder (default: WPLUS_MODELS_DIR, settings, ./models)")
        for name in ("sd-model", "vae", "e4e", "adapter", "parser"):
            p.add_argument(f"--{name}", help=f"override the {name} path (absolute or relative to the models folder)")

    def shape_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profile", choices=("dynamic", "static"), default="dynamic",
                       help="dynamic: any size in [min-side, max-side]; static: one size (default dynamic)")
        p.add_argument("--height", type=int, default=512, help="static profile image height (px)")
        p.add_argument("--width", type=int, default=512, help="static profile image width (px)")
        p.add_argument("--min-side", type=int, default=256)
        p.add_argument("--opt-side", type=int, default=512)
        p.add_argument("--max-side", type=int, default=1024)
        p.add_argument("--batch", type=int, default=1, help="images per call (the UNet sees 2× with CFG)")
        p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
        p.add_argument("--components", help=f"comma-separated subset of {', '.join(COMPONENTS)} "
                       f"(default: all but the optional {', '.join(OPTIONAL_COMPONENTS)})")

    p = sub.add_parser("onnx", help="export components to ONNX (one .onnx + .onnx.json each)")
    models_args(p)
    shape_args(p)
    p.add_argument("--out", dest="onnx_dir", help="output folder (default: <models>/onnx)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--verify", action="store_true", help="compare each export with torch on ONNX Runtime CPU")
    p.set_defaults(func=cmd_onnx)

    p = sub.add_parser("verify", help="compare ONNX exports with the torch models (ONNX Runtime CPU)")
    models_args(p)
    p.add_argument("--onnx-dir", help="folder of the exports (default: <models>/onnx)")
    p.add_argument("--components", help=f"comma-separated subset of {', '.join(COMPONENTS)} "
                       f"(default: all but the optional {', '.join(OPTIONAL_COMPONENTS)})")
    p.add_argument("--seeds", type=int, default=2, help="how many seeded inputs per component")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("trt", help="build TensorRT engines from the ONNX exports (NVIDIA GPU + tensorrt)")
    shape_args(p)
    p.set_defaults(precision="fp16")
    p.add_argument("--models-dir", help="models folder (for the default --onnx-dir)")
    p.add_argument("--onnx-dir", help="folder of the exports (default: <models>/onnx)")
    p.add_argument("--cache-dir", help="engine cache (default: <onnx-dir>/../engines)")
    p.add_argument("--rebuild", action="store_true", help="build even when a matching engine is cached")
    p.set_defaults(func=cmd_trt)

    p = sub.add_parser("controls", help="ControlNet graphs, residual/FreeU UNet variants, LoRA-set exports")
    models_args(p)
    shape_args(p)
    p.set_defaults(profile="static")
    p.add_argument("--onnx-dir", help="folder of the exports (default: <models>/onnx)")
    p.add_argument("--controlnet", action="append", default=[], metavar="PATH",
                   help="export this ControlNet (and the UNet that takes its residuals); repeatable")
    p.add_argument("--control-unet", action="store_true",
                   help="export the UNet that takes ControlNet residuals (implied by --controlnet)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT[:TEXT_WEIGHT]]",
                   help="a LoRA of the set to fuse into text encoder and UNet (repeatable: one set); the UNet "
                        "variants then go into the set's folder loras/<key>/")
    p.add_argument("--freeu", action="store_true", help="also the FreeU-flagged UNet variants (official factors)")
    p.set_defaults(func=cmd_controls, usage=p.format_usage())

    p = sub.add_parser("check", help="list exports and whether they are damaged or stale")
    p.add_argument("--models-dir", help="models folder (for the default --onnx-dir)")
    p.add_argument("--onnx-dir", help="folder of the exports (default: <models>/onnx)")
    p.add_argument("--deep", action="store_true", help="re-hash the ONNX files")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m export` and the `wplus-export` console script."""
    from engine.cli import run_parser

    return run_parser(build_parser(), argv)
