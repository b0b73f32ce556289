"""`wplus align`: detect a face and write its FFHQ-aligned 512² crop (the official recipe)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "align",
        help="detect a face and write its 512×512 FFHQ-aligned crop",
        description=(
            "Detect faces (dlib HOG + 68 landmarks) and write the chosen face aligned exactly as the official "
            "W+ adapter script does (512×512, black where the crop leaves the photo). "
            "Example: wplus align photo.jpg -o face.png --face 0"
        ),
    )
    p.add_argument("photo", help="input photo (JPEG, PNG, …; EXIF orientation is honoured)")
    p.add_argument("-o", "--output", required=True, help="output PNG (512×512 RGB)")
    p.add_argument("--face", type=int, default=0, help="which face, largest first (default 0)")
    p.add_argument("--mode", choices=("official", "reflect"), default="official",
                   help="official: black fill outside the photo (default); reflect: FFHQ/e4e reflect padding")
    p.add_argument("--min-size", type=float, default=160.0,
                   help="refuse faces whose crop is not wider than this many pixels (official: 160)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.errors import FaceNotFound, InvalidInput
    from engine.faces.align import align_face
    from engine.faces.detect import FaceDetector
    from engine.images import load_image, save_png

    image = load_image(args.photo)
    faces = FaceDetector().detect(image)
    if not faces:
        raise FaceNotFound(
            f"No face was found in {args.photo}.",
            "Use a well-lit photo with a frontal, unobstructed face at least ~100 px wide.",
        )
    if not 0 <= args.face < len(faces):
        raise InvalidInput(f"--face {args.face} was requested but {args.photo} has {len(faces)} face(s).",
                           f"Use --face 0 to {len(faces) - 1} (0 = the largest).")
    face = faces[args.face]
    aligned, width = align_face(image, face.landmarks, mode=args.mode)
    if not width > args.min_size:
        raise FaceNotFound(f"Face {args.face} is too small ({width:.0f} px across the crop, more than "
                           f"{args.min_size:.0f} needed).", "Use a larger photo, or lower --min-size.")
    save_png(args.output, aligned)
    print(f"{len(faces)} face(s) found; face {args.face} (crop width {width:.0f} px) → {args.output}")
    return 0
