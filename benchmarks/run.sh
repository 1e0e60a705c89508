#!/usr/bin/env bash
# One command for the core benchmark: installs uvloop (the loop to beat) and
# ferroloop into the project virtual environment (.venv, see
# scripts/venv.sh), then compares asyncio, uvloop and ferroloop in the same
# run. Arguments go to core.py (e.g. --quick, --no-callgrind, --json out.json).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
venv_install "to compare with" uvloop
venv_install_ferroloop
exec "$VENV_PYTHON" benchmarks/core.py "$@"
