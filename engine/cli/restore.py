"""`wplus restore`: PSFRGAN blind face restoration of an aligned 512² face (the official `-s` step alone)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "restore",
        help="restore an aligned 512×512 face with PSFRGAN (as the official -s option)",
        description=(
            "Restore an aligned face (e.g. from `wplus align`) with PSFRGAN's generator, guided by ParseNet's "
            "parse map of the face. The PNG is what `wplus encode --restore` would encode. "
            "Example: wplus restore face.png -o restored.png"
        ),
    )
    p.add_argument("face", help="aligned face image (512×512; other sizes are resized bilinearly)")
    p.add_argument("-o", "--output", required=True, help="restored face (PNG, the official tensor2pil values)")
    p.add_argument("--psfrgan", default="",
                   help="PSFRGAN generator (default: psfrgan_epoch15_net_G.pth in the models folder)")
    p.add_argument("--parser", default="",
                   help="ParseNet checkpoint (default: parse_multi_iter_90000.pth in the models folder)")
    p.add_argument("--parse-map", metavar="MAP.npy",
                   help="class indices (512×512 uint8, 19 classes) to use instead of running the face parser")
    p.add_argument("--raw", metavar="OUT.npy", help="also write the float output (1×3×512×512, before clipping)")
    p.set_defaults(func=run)


def _user_path(text: str) -> str:
    # a user's path is relative to the current directory, not to the models folder
    return str(Path(text).expanduser().resolve()) if text else ""


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.cli.common import config_from_args
    from engine.errors import InvalidInput, ModelMissing
    from engine.faces.restore import labels_onehot, open_restorer, parse_onehot
    from engine.fileio import atomic_write_with
    from engine.images import load_image, save_png
    from engine.models.service import ModelService

    config = config_from_args(args, psfrgan=_user_path(args.psfrgan), parser=_user_path(args.parser))
    models = ModelService(config)
    face = load_image(args.face)
    restorer = open_restorer(models)  # first: a missing generator is reported before any parsing
    if args.parse_map:
        try:
            labels = np.load(args.parse_map, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{args.parse_map} is not a readable .npy parse map ({exc}).") from exc
        onehot = labels_onehot(labels)
    else:
        from engine.backends.torch_backend import module_runner
        from engine.faces.parse import FaceParser

        parser_path = models.find("parser")
        if parser_path is None:
            raise ModelMissing(
                f"Restoration needs the face parser (parse_multi_iter_90000.pth in {config.models_dir}).",
                "Put it in the models folder, pass --parser PATH, or give a parse map with --parse-map.",
            )
        parser = FaceParser(module_runner("face_parser", models.load("parser")))
        onehot = parse_onehot(parser.logits(face))
    result = restorer.restore(face, onehot)
    save_png(args.output, result.image)
    if args.raw:
        atomic_write_with(args.raw, lambda fh: np.save(fh, result.raw))
    print(f"restored ({restorer.backend}) → {args.output}")
    return 0
