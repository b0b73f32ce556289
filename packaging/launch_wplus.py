"""PyInstaller entry of the command-line executable `wplus` (engine.cli.main)."""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
