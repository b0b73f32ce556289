#!/bin/sh
# Real screenshot of W+ Studio under Xvfb (1440×900), tiny real models. Needs: xvfb xauth libxcb-cursor0 …
set -e
cd "$(dirname "$0")/../.."
. .venv/bin/activate
QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1440x900x24" python docs/screenshots/make_screenshot.py "$@"
