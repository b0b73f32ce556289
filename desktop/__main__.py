"""Entry point of `wplus-studio` (and of the PyInstaller build)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wplus-studio", description="W+ Studio: personalised Stable Diffusion 1.5.")
    p.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help="a photo to capture (after the consent note) or one of our PNGs to restore its settings; "
                        "relative to the current directory")
    p.add_argument("--models-dir", type=Path, default=None, help="the models folder (overrides settings)")
    p.add_argument("--self-test", action="store_true", help="check the installation and exit")
    p.add_argument("--debug", action="store_true", help="verbose log file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, then run the self-test or the app; returns the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        from desktop.selftest import run_self_test

        return int(run_self_test())
    from desktop.app import AppOptions, run

    files = tuple(f.absolute() for f in args.files)  # before anything could change the current directory
    return run(AppOptions(models_dir=args.models_dir, debug=args.debug, open_files=files))


if __name__ == "__main__":
    sys.exit(main())
