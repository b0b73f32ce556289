#!/usr/bin/env bash
# Sets up .venv if needed and starts W+ Studio (models folder: ./models unless configured).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/wplus-studio ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/wplus-studio "$@"
