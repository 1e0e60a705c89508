#!/usr/bin/env bash
# One command for the core benchmark: installs uvloop (the loop to beat) and
# ferroloop, then compares asyncio, uvloop and ferroloop in the same run.
# Arguments go to core.py (e.g. --quick, --no-callgrind, --json out.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --disable-pip-version-check "maturin>=1.5,<2" uvloop 2>&1 | grep -v "Running pip as the 'root' user" || true
"$PYTHON" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps . 2>&1 | grep -v "Running pip as the 'root' user" || true
exec "$PYTHON" benchmarks/core.py "$@"
