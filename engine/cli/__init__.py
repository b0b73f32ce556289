"""The `wplus` command. Each subcommand lives in its own module exposing `register(subparsers)`.

Exit codes: 0 ok, 1 failure (an EngineError, printed without a traceback unless --debug), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from engine.cli.common import MODELS_DIR_HELP
from engine.errors import Cancelled, EngineError
from engine.logs import setup_cli_logging

# Subcommand modules in help order; a module registers one or more subcommands.
SUBCOMMAND_MODULES = (
    "engine.cli.align",
    "engine.cli.encode",
    "engine.cli.restore",
    "engine.cli.edit",
    "engine.cli.generate",
    "engine.cli.preview",
    "engine.cli.likeness",
    "engine.cli.models",
    "engine.cli.info",
    "engine.cli.dataset",
    "engine.cli.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wplus",
        description="W+ Studio command line: align and encode faces, edit W+, generate with SD1.5 + the W+ adapter.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks, library warnings and debug logging (always in the log file)")
    parser.add_argument("--models-dir", help=MODELS_DIR_HELP)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _accept_global_options_anywhere(sub)
    return parser


def _accept_global_options_anywhere(sub: argparse._SubParsersAction) -> None:
    """Accept the global options after the (sub)subcommand too (`wplus models list --models-dir D`).

    Users type them there; SUPPRESS keeps a value given before the subcommand from being overwritten.
    """
    for subparser in sub.choices.values():
        for flags, kwargs in (
            (("--debug",), {"action": "store_true", "help": argparse.SUPPRESS}),
            (("--models-dir",), {"help": argparse.SUPPRESS}),
            (("--device",), {"help": argparse.SUPPRESS}),
        ):
            if not any(f in subparser._option_string_actions for f in flags):
                subparser.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
        for action in subparser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_global_options_anywhere(action)


def main(argv: Sequence[str] | None = None) -> int:
    return run_parser(build_parser(), argv)


def run_parser(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, run the chosen subcommand, and turn failures into exit codes and one-line messages.

    Shared by `wplus` and `wplus-export`. The parser must define `--debug`; subcommands set `func`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parser.parse_args(argv)
    # library warnings and hints go to the log file; the console shows them only with --debug
    setup_cli_logging(parser.prog, debug=args.debug)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EngineError as exc:
        if args.debug:
            raise
        print(f"error: {exc.user_message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `wplus edit --list | head`: the reader left; not an error of ours. Silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if args.debug:
            raise
        print(f"error: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
