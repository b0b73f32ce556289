#!/bin/sh
# Real screenshot of W+ Studio under Xvfb (1440×900): a real capture on the real engine with rule/tiny weights
# (writes tiny SD1.5 + a 1.2 GB rule-weight e4e to a temp folder; WPLUS_SHOT_MODELS=DIR keeps them).
# Needs: xvfb xauth libxcb-cursor0 …
set -e
cd "$(dirname "$0")/../.."
. .venv/bin/activate
QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1440x900x24" python docs/screenshots/make_screenshot.py "$@"
