#!/usr/bin/env bash
# One command for the network benchmarks: installs what they need, then
# compares asyncio, uvloop and ferroloop in the same run.
#
#   bash benchmarks/run_network.sh                  # echo.py, http_bench.py, churn.py (defaults: ~12 min)
#   bash benchmarks/run_network.sh echo [ARGS...]   # only echo.py, e.g. echo --quick, echo --callgrind
#   bash benchmarks/run_network.sh http [ARGS...]   # only http_bench.py, e.g. http --quick
#   bash benchmarks/run_network.sh churn [ARGS...]  # only churn.py, e.g. churn --no-callgrind
#
# Installs uvloop, uvicorn and httptools into the project virtual environment
# (.venv, see scripts/venv.sh), wrk (apt-get, if missing) and
# builds the Rust load generator benchmarks/echo_client (cargo, offline when
# the registry cache has its crates).  ferroloop: the in-tree build
# (python/ferroloop with its native module, as scripts/dev-build.sh leaves
# it) when there is one, else a build installed into .venv as
# benchmarks/run.sh does.
# Each benchmark copies the ferroloop package at its start, so a rebuild
# during the run does not change what it measures.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh

what=all
case "${1:-}" in
  echo|http|churn|all) what=$1; shift ;;
esac
if [[ $what == all && $# -gt 0 ]]; then
  echo "usage: $0 [echo|http|churn [ARGS...]]  (arguments need 'echo', 'http' or 'churn' first)" >&2
  exit 2
fi

venv_install "to compare with" uvloop uvicorn httptools
if ! command -v wrk >/dev/null; then
  echo "== installing wrk system-wide with apt-get" >&2
  sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
fi

echo "building benchmarks/echo_client (cargo build --release)" >&2
manifest=benchmarks/echo_client/Cargo.toml
cargo build --release --quiet --offline --manifest-path "$manifest" 2>/dev/null \
  || cargo build --release --quiet --manifest-path "$manifest"

if compgen -G "python/ferroloop/_native*.so" >/dev/null; then
  echo "ferroloop: the in-tree build in python/ferroloop" >&2
  export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "ferroloop: no in-tree build; installing one into .venv" >&2
  venv_install_ferroloop
fi

status=0
if [[ $what == echo || $what == all ]]; then
  "$VENV_PYTHON" benchmarks/echo.py "$@" || status=1
fi
if [[ $what == http || $what == all ]]; then
  [[ $what == all ]] && echo
  "$VENV_PYTHON" benchmarks/http_bench.py "$@" || status=1
fi
if [[ $what == churn || $what == all ]]; then
  [[ $what == all ]] && echo
  "$VENV_PYTHON" benchmarks/churn.py "$@" || status=1
fi
exit $status
