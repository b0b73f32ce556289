#!/bin/sh
# The README's "first ten minutes" screenshots, under Xvfb at 1440×900 (see make_walkthrough.py).
set -e
cd "$(dirname "$0")/../.."
. .venv/bin/activate
QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1440x900x24" python docs/screenshots/make_walkthrough.py "$@"
