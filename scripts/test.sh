#!/usr/bin/env bash
# Sets up .venv if needed and runs the default test suite (slow, GPU and TensorRT tests are opt-in).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 QT_QPA_PLATFORM=offscreen
.venv/bin/ruff check engine desktop export tests bench
.venv/bin/lint-imports
.venv/bin/mypy  # files and settings: [tool.mypy] in pyproject.toml
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
# pytest exits 5 when no test was collected: that is a failure of the suite here, not a pass.
exit $rc
