"""`wplus models list|verify|fetch|import|convert|clean`: what the models folder holds, how to fill and tidy it.

Exit codes: 0 done; 1 a model is missing/damaged or an operation failed (the message says what to do);
2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from engine.api import ModelState, ModelStatus, Progress
from engine.cli.common import MODELS_DIR_HELP
from engine.errors import EngineError

_BAR = 24


class TerminalProgress:
    """Draws a one-line progress bar per stage on a terminal; plain start/end lines otherwise."""

    def __init__(self, stream: TextIO | None = None, *, min_interval: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self._stage = ""
        self._last = 0.0
        self._last_p: Progress | None = None

    def __call__(self, p: Progress) -> None:
        if p.stage != self._stage:
            self.finish()
            self._stage = p.stage
            if not self.tty:
                print(f"{p.stage} …", file=self.stream, flush=True)
        self._last_p = p
        now = time.monotonic()
        if self.tty and (now - self._last >= self.min_interval or p.step >= p.total > 0):
            self._last = now
            self.stream.write("\r" + self.render(p) + "\x1b[K")
            self.stream.flush()

    @staticmethod
    def render(p: Progress) -> str:
        """One status line: stage, bar, percent, bytes, rate and ETA."""
        frac = p.fraction
        filled = round(frac * _BAR)
        bar = "#" * filled + "-" * (_BAR - filled)
        parts = [f"{p.stage[:38]:<38} [{bar}] {frac * 100:5.1f}%"]
        if p.total > 4096:
            parts.append(f"{_size(p.step)}/{_size(p.total)}")
        if p.elapsed_s > 0 and p.step > 0 and p.total > 4096:
            parts.append(f"{_size(p.step / p.elapsed_s)}/s")
        if p.eta_s is not None and p.step < p.total:
            parts.append(f"ETA {_duration(p.eta_s)}")
        return " ".join(parts)

    def finish(self) -> None:
        if self._stage and self.tty:
            self.stream.write("\n")
            self.stream.flush()
        elif self._stage and self._last_p is not None and self._last_p.total > 4096:
            print(f"{self._stage}: {_size(self._last_p.step)}", file=self.stream, flush=True)
        self._stage = ""
        self._last_p = None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _duration(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# -- helpers ------------------------------------------------------------------------------------------


def _context(args: argparse.Namespace):
    from engine.cli.common import config_from_args
    from engine.models.folder import resolve_models_dir
    from engine.models.manifest import load_manifest

    manifest = load_manifest(args.manifest) if getattr(args, "manifest", None) else load_manifest()
    config = config_from_args(args)
    _, why = resolve_models_dir(getattr(args, "models_dir", None))
    return manifest, config, why


def _print_states(states: tuple[ModelState, ...], out: TextIO) -> None:
    width = max([len(s.id) for s in states] + [8])
    print(f"{'ID':<{width}}  {'STATUS':<10}  {'NEEDED':<8}  PATH", file=out)
    for s in states:
        print(f"{s.id:<{width}}  {s.status.value:<10}  {'required' if s.required else 'optional':<8}  {s.path}", file=out)
        if s.message:
            print(f"{'':<{width}}  {s.message}", file=out)


def _states_json(states: tuple[ModelState, ...], models_dir: Path, why: str) -> str:
    return json.dumps(
        {
            "models_dir": str(models_dir),
            "chosen_because": why,
            "models": [
                {"id": s.id, "role": s.role, "status": s.status.value, "required": s.required, "path": s.path,
                 "message": s.message, "licence": s.licence, "source_url": s.source_url}
                for s in states
            ],
        },
        indent=1,
    )


def _problems(states: tuple[ModelState, ...], named: bool) -> list[ModelState]:
    bad = (ModelStatus.MISSING, ModelStatus.CORRUPT)
    return [s for s in states if s.status in bad and (s.required or named)]


# -- subcommands ----------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from engine.models.verify import check_models

    manifest, config, why = _context(args)
    states = check_models(config, manifest=manifest, verify=False)
    if args.json:
        print(_states_json(states, config.models_dir, why))
        return 0
    print(f"models folder: {config.models_dir} ({why})")
    _print_states(states, sys.stdout)
    if args.licences:
        print("\nlicences:")
        for e in manifest:
            print(f"  {e.id}: {e.licence}  <{e.source_url}>")
    missing = [s.id for s in states if s.required and s.status == ModelStatus.MISSING]
    if missing:
        print(f"\nmissing required models: {', '.join(missing)} — `wplus models import DIR` (offline) or "
              "`wplus models fetch` (online)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from engine.models.verify import check_models

    manifest, config, why = _context(args)
    bar = TerminalProgress()
    try:
        states = check_models(config, manifest=manifest, ids=args.ids or None, verify=True, progress=bar)
    finally:
        bar.finish()
    if args.json:
        print(_states_json(states, config.models_dir, why))
    else:
        print(f"models folder: {config.models_dir} ({why})")
        _print_states(states, sys.stdout)
    problems = _problems(states, named=bool(args.ids))
    if problems:
        print(f"error: {len(problems)} model(s) missing or damaged: {', '.join(s.id for s in problems)}", file=sys.stderr)
        return 1
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from engine.models.fetch import fetch
    from engine.models.verify import check_models

    manifest, config, _why = _context(args)
    if args.ids:
        entries = [manifest.by_id(i) for i in args.ids]
    else:
        entries = [e for e in manifest if e.required or args.all]
    entries = [e for e in entries if e.kind != "bundled"]
    states = {s.id: s for s in check_models(config, manifest=manifest, ids=[e.id for e in entries], verify=False)}
    print(f"models folder: {config.models_dir}")
    failures: list[str] = []
    bar = TerminalProgress()
    for e in entries:
        st = states[e.id]
        if st.status in (ModelStatus.OK, ModelStatus.UNVERIFIED) and not args.force:
            print(f"{e.id}: already present ({st.path})")
            continue
        approx = f" (≈{_size(e.approx_size)})" if e.approx_size else ""
        print(f"{e.id}: downloading{approx} — licence: {e.licence}")
        try:
            paths = fetch(e, config.models_dir, progress=bar, timeout=args.timeout)
        except EngineError as exc:
            bar.finish()
            print(f"error: {e.id}: {exc.user_message}", file=sys.stderr)
            if exc.hint:
                print(f"hint: {exc.hint}", file=sys.stderr)
            failures.append(e.id)
            continue
        bar.finish()
        for p in paths:
            print(f"{e.id}: saved {p}")
    if failures:
        print(f"error: not downloaded: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from engine.models.folder import user_path
    from engine.models.importer import import_models

    manifest, config, _why = _context(args)
    bar = TerminalProgress()
    try:
        report = import_models(
            user_path(args.source), config.models_dir, link=args.link, progress=bar, manifest=manifest,
            convert=not args.no_convert,
        )
    finally:
        bar.finish()
    print(f"models folder: {config.models_dir}")
    for line in report.lines():
        print(line)
    if report.rejected:
        print(f"error: {len(report.rejected)} file(s) refused (see above)", file=sys.stderr)
        return 1
    if not report.imported:
        print(f"error: no model files recognised in {args.source}", file=sys.stderr)
        return 1
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from engine.models.convert import convert_to_safetensors
    from engine.models.folder import user_path

    src = user_path(args.src)
    dst = user_path(args.output) if args.output else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise EngineError(f"{src} is already a safetensors file.", "Give another output name with -o.")
    if dst.suffix.lower() != ".safetensors":
        raise EngineError(f"The output {dst} must end in .safetensors.")
    out = convert_to_safetensors(src, dst)
    print(f"wrote {out} ({_size(out.stat().st_size)})")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from engine.models.converted import clean_converted, store_roots

    _manifest, config, _why = _context(args)
    roots = store_roots(config.models_dir, config.cache_dir)
    removed = clean_converted(config.models_dir, config.cache_dir, everything=args.all, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"models folder: {config.models_dir}")
    for c in removed:
        why = "--all" if c.state == "current" else c.state
        print(f"{verb}: {c.path} ({_size(c.size)}; {why}{': ' + c.source if c.source else ''})")
    freed = sum(c.size for c in removed)
    if not roots:
        print("no converted copies (nothing in .converted/)")
    else:
        kept = "" if args.all else " (copies whose source is unchanged are kept; --all removes them too)"
        print(f"{verb} {len(removed)} converted cop{'y' if len(removed) == 1 else 'ies'}, "
              f"{_size(freed)} ({freed:,} bytes) {'would be ' if args.dry_run else ''}freed{kept}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `models` with its subcommands to the `wplus` parser."""
    p = subparsers.add_parser(
        "models", help="list, verify, download or import model files",
        description="Manage the models folder. The folder is chosen by --models-dir, WPLUS_MODELS_DIR, "
        "the app settings, ./models in the current directory, a models/ folder beside the app, or your user "
        "data folder (first match wins).",
    )
    p.add_argument("--models-dir", default=argparse.SUPPRESS, help=MODELS_DIR_HELP)
    p.add_argument("--manifest", default=argparse.SUPPRESS, help="a model manifest (default: the built-in one)")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])

    s = sub.add_parser("list", help="show each model, where it should be and whether it is there (quick)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--licences", action="store_true", help="also list the licence of each model")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("verify", help="check sizes and sha256 of the model files (reads them once)")
    s.add_argument("ids", nargs="*", metavar="ID", help="only these models (default: all)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("fetch", help="download models (online machines only; resumes interrupted downloads)")
    s.add_argument("ids", nargs="*", metavar="ID", help="models to download (default: the required ones)")
    s.add_argument("--all", action="store_true", help="also the optional models")
    s.add_argument("--force", action="store_true", help="download even if present")
    s.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("import", help="copy model files from a folder, USB drive or .zip (offline)")
    s.add_argument("source", metavar="DIR|ZIP", help="folder or .zip holding model files")
    s.add_argument("--link", action="store_true", help="hard-link (or symlink) instead of copying")
    s.add_argument("--no-convert", action="store_true", help="keep pickles as they are (convert later)")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("convert", help="convert a pickled checkpoint (.pt/.pth/.bin) to safetensors")
    s.add_argument("src", metavar="SRC", help="the pickled checkpoint (loaded with weights_only)")
    s.add_argument("-o", "--output", metavar="DST", help="output .safetensors (default: beside SRC)")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser(
        "clean", help="remove converted copies (.converted/) whose source is gone or changed",
        description="Pickled checkpoints that are not the manifest's own files (an SD1.5 .ckpt, a diffusers "
        "folder of .bin weights, a file given with --e4e/--parser/…) are converted once into "
        "<models>/.converted/. This removes the copies whose source file was deleted or changed (and copies "
        "whose source is not recorded); nothing outside .converted/ is touched. Copies are made again "
        "when needed.",
    )
    s.add_argument("--all", action="store_true", help="remove every converted copy (rebuilt on demand)")
    s.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    s.set_defaults(func=cmd_clean)
