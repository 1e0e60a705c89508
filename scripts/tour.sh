#!/usr/bin/env bash
# The main job: builds and installs ferroloop into the project virtual
# environment (.venv, see scripts/venv.sh), then runs the tour of asyncio's
# basics on it (each program's output, wall time, and the loop that ran it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
venv_install_ferroloop
exec "$VENV_PYTHON" examples/tour.py "$@"
