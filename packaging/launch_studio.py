"""PyInstaller entry of the GUI executable `wplus-studio` (desktop/__main__.py's main)."""

import sys

from desktop.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
