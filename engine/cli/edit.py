"""`wplus edit`: apply slider edits to a W+ code (or list the sliders)."""

from __future__ import annotations

import argparse
import math
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "edit",
        help="apply slider edits (age, smile, pose, …) to a W+ code",
        description=(
            "Apply edits to a W+ code (.npy or an official .pth) and write the result as .npy. "
            "Example: wplus edit face.npy --set age=2 --set smile=-1 -o face_older.npy. "
            "Sliders are offsets: 0 leaves the face unchanged. See --list for names and ranges."
        ),
    )
    p.add_argument("wplus", nargs="?", help="input W+ (.npy, or an official .pth saved by the W+ adapter code)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                   help="one edit; repeat for several (they are summed, see docs/EDITS.md)")
    p.add_argument("--towards", metavar="W2", help="also interpolate towards another W+ (before the edits)")
    p.add_argument("-t", "--t", dest="t", type=float, default=0.5, help="interpolation weight for --towards (0..1)")
    p.add_argument("-o", "--output", help="output W+ (.npy)")
    p.add_argument("--list", action="store_true", help="print the edit catalog and exit")
    p.set_defaults(func=run)


def _parse_sets(items: list[str]) -> dict[str, float]:
    from engine.errors import InvalidInput

    values: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not sep or not name or not math.isfinite(value):
            raise InvalidInput(f"Cannot read the edit '{item}'.", "Write it as NAME=NUMBER, e.g. --set age=2.")
        values[name] = values.get(name, 0.0) + value
    return values


def _print_catalog(lib) -> None:
    group = None
    for s in lib.catalog:
        if s.group != group:
            group = s.group
            print(f"\n{group}")
        print(f"  {s.name:<26} {s.label:<30} [{s.minimum:+g} … {s.maximum:+g}]  {s.kind.value}")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.edits.directions import DirectionLibrary, interpolate
    from engine.edits.wplus_files import read_wplus, write_wplus
    from engine.errors import InvalidInput

    lib = DirectionLibrary.load_default()
    if args.list:
        _print_catalog(lib)
        return 0
    if not args.wplus or not args.output:
        raise InvalidInput("wplus edit needs an input W+ and -o OUTPUT.npy (or --list).")
    edits = _parse_sets(args.sets)
    w = read_wplus(args.wplus)
    if args.towards:
        w = interpolate(w, read_wplus(args.towards), args.t)
    out = lib.apply(w, edits)
    write_wplus(args.output, out)
    summary = ", ".join(f"{k}={v:+g}" for k, v in edits.items()) or "none"
    change = float(np.abs(out.astype(np.float64) - read_wplus(args.wplus)).max())
    print(f"wrote {args.output} (edits: {summary}; max |ΔW+| = {change:.4g})", file=sys.stdout)
    return 0
