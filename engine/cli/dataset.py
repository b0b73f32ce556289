"""`wplus dataset build`: prepare a training dataset from a folder of photos with the product's face chain."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("dataset", help="prepare training data for `wplus train`",
                              description="Prepare W+ adapter training data from photos.")
    sub = p.add_subparsers(dest="dataset_command", metavar="ACTION")
    b = sub.add_parser(
        "build",
        help="align, encode and mask a folder of photos",
        description=(
            "Stage 1: aligned 512² faces and the e4e W+ of each whole crop. Stage 2: the photos (short side 560), "
            "face-region masks (ParseNet when installed, else the landmark hull) and background-whitened W+. "
            "Captions come from NAME.txt next to each photo, else a template. Resumable: photos already in the "
            "manifest are skipped; failures are listed in DATA_DIR/report.json."
        ),
    )
    b.add_argument("photos", metavar="PHOTOS_DIR")
    b.add_argument("-o", "--out", required=True, metavar="DATA_DIR")
    b.add_argument("--stage", type=int, choices=(1, 2), required=True)
    b.add_argument("--e4e", metavar="CKPT", help="e4e checkpoint (default: from the models folder)")
    b.add_argument("--parser", metavar="CKPT", help="ParseNet checkpoint (default: from the models folder)")
    b.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)),
                   help="parallel CPU worker processes")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=run_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def make_chain(models_dir: str, e4e: str, parser: str, device: str) -> Any:
    """A FaceChain for one worker process (module-level so worker pools can pickle it)."""
    from engine.config import EngineConfig
    from engine.faces.chain import FaceChain
    from engine.models.service import ModelService

    cfg = EngineConfig(models_dir=Path(models_dir), device=device, e4e=e4e, parser=parser)
    return FaceChain.from_service(ModelService(cfg))


def run_build(args: argparse.Namespace) -> int:
    from engine.cli.common import config_from_args
    from engine.training.prepare import build_dataset

    cfg = config_from_args(args)
    e4e = str(Path(args.e4e).resolve()) if args.e4e else ""
    parser = str(Path(args.parser).resolve()) if args.parser else ""
    device = "cpu" if args.workers > 1 else (getattr(args, "device", "auto") or "auto")
    make_chain(str(cfg.models_dir), e4e, parser, device)  # fail early (missing e4e) before starting workers
    factory = functools.partial(make_chain, str(cfg.models_dir), e4e, parser, device)
    report = build_dataset(args.photos, args.out, args.stage, factory, workers=args.workers, progress=not args.quiet)
    print(f"{report.done} added, {report.skipped} already done, {len(report.failed)} failed "
          f"({report.photos_per_s:.2f} photos/s); report: {Path(args.out) / 'report.json'}")
    for f in report.failed[:10]:
        print(f"  failed: {f['photo']}: {f['reason']}")
    return 0
