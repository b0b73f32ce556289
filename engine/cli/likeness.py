"""`wplus likeness`: how alike two faces are (dlib face descriptor distance)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "likeness",
        help="distance between two faces (< 0.6 ≈ same person)",
        description=(
            "Compare the largest face of two images with dlib's face descriptor (128-d ResNet). "
            "The distance is Euclidean: below 0.6 the faces are most likely the same person "
            "(dlib's calibration, 99.38%% on LFW); smaller is more alike. "
            "Example: wplus likeness face.png generated.png"
        ),
    )
    p.add_argument("a", help="first image (e.g. the identity's aligned face)")
    p.add_argument("b", help="second image (e.g. a generated picture)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.faces.likeness import SAME_PERSON_THRESHOLD, likeness_distance
    from engine.images import load_image

    d = likeness_distance(load_image(args.a), load_image(args.b))
    verdict = "likely the same person" if d < SAME_PERSON_THRESHOLD else "likely different people"
    print(f"{d:.4f}  ({verdict}; < {SAME_PERSON_THRESHOLD} ≈ same person)")
    return 0
