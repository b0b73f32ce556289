"""`wplus encode`: photo → W+ through the whole official chain (detect → align → whiten → e4e)."""

from __future__ import annotations

import argparse
import sys

from engine.cli.common import add_backend_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encode",
        help="encode a face photo to a W+ code (.npy, 1×18×512)",
        description=(
            "Run the official chain: dlib detection and landmarks, FFHQ alignment to 512², ParseNet background "
            "and clothes whitening, e4e → W+. Without the parser file the face is encoded without whitening "
            "(a warning says so). Paths are relative to the current directory; models you do not name come from the models folder. "
            "Example: wplus encode --e4e models/e4e_ffhq_encode.pt photo.jpg -o me.npy"
        ),
    )
    p.add_argument("photo", help="input photo, or an aligned face with --aligned")
    p.add_argument("-o", "--output", required=True,
                   help="output W+ (.npy, float32 1×18×512; missing folders are created)")
    p.add_argument("--e4e", default="", help="e4e checkpoint (default: e4e_ffhq_encode.pt in the models folder)")
    p.add_argument("--parser", default="",
                   help="ParseNet checkpoint (default: parse_multi_iter_90000.pth in the models folder)")
    p.add_argument("--aligned", action="store_true",
                   help="the photo is already an FFHQ-aligned face (resized to 512² bilinearly, no detection)")
    p.add_argument("--face", type=int, default=0, help="which face, largest first (default 0)")
    p.add_argument("--mode", choices=("official", "reflect"), default="official", help="alignment border mode")
    p.add_argument("--save-aligned", metavar="PNG", help="also write the aligned 512² face")
    add_backend_argument(p)
    p.add_argument("--restore", action="store_true",
                   help="restore the aligned face with PSFRGAN before encoding (the official -s; needs "
                        "psfrgan_epoch15_net_G.pth)")
    p.add_argument("--psfrgan", default="", help="PSFRGAN generator (default: in the models folder)")
    p.add_argument("--save-restored", metavar="PNG", help="with --restore: also write the restored face")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.cli.common import config_from_args
    from engine.faces.chain import FaceChain
    from engine.fileio import atomic_write_with
    from engine.images import load_image, save_png
    from engine.models.service import ModelService

    config = config_from_args(args, e4e=args.e4e, parser=args.parser, psfrgan=args.psfrgan)
    chain = FaceChain.from_service(ModelService(config))
    chain.align_mode = args.mode
    image = load_image(args.photo)
    identity = chain.encode_identity(image, aligned=args.aligned, face_index=args.face, restore=args.restore)
    atomic_write_with(args.output, lambda fh: np.save(fh, identity.wplus))
    if args.save_aligned and identity.aligned_face is not None:
        save_png(args.save_aligned, identity.aligned_face)
    if args.save_restored and identity.restored_face is not None:
        save_png(args.save_restored, identity.restored_face)
    for w in identity.info.get("warnings", ()):
        print(f"warning: {w}", file=sys.stderr)
    found = identity.info.get("faces_found")
    what = "aligned input" if args.aligned else f"face {args.face} of {found}"
    restored = "; restored (PSFRGAN)" if identity.info.get("restored") else ""
    print(f"{what}; whitened: {'yes' if identity.info.get('whitened') else 'no'}{restored} → {args.output}")
    return 0
