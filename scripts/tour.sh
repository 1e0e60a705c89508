#!/usr/bin/env bash
# The main job: builds and installs ferroloop, then runs the tour of asyncio's
# basics on it (each program's output, wall time, and the loop that ran it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --disable-pip-version-check "maturin>=1.5,<2" 2>&1 | grep -v "Running pip as the 'root' user" || true
"$PYTHON" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps . 2>&1 | grep -v "Running pip as the 'root' user" || true
exec "$PYTHON" examples/tour.py "$@"
