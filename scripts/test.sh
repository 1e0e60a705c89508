#!/usr/bin/env bash
# Runs every test: builds and installs ferroloop into the project virtual
# environment (.venv, see scripts/venv.sh), then the Rust unit tests, CPython's
# own asyncio tests and uvloop's on ferroloop, the pytest suite, and one
# manylinux2014 wheel. Ends with one verdict line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh

failed=()
step() {
    local name=$1
    shift
    echo "== $name"
    if ! "$@"; then
        failed+=("$name")
    fi
}

# shellcheck disable=SC2046  # one package per line, no spaces
venv_install "for the tests (scripts/test-requirements.txt)" $(grep -v '^#' scripts/test-requirements.txt)
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "== installing PostgreSQL and openssl system-wide with apt-get (the asyncpg tests start a throwaway server)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql openssl; } >/dev/null
fi
venv_install_ferroloop

# The Rust tests link against libpython; tell the loader where it lives.
libdir=$("$VENV_PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
step "cargo test" env LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" PYO3_PYTHON="$VENV_PYTHON" cargo test --quiet

step "CPython test_asyncio (core and network modules) on ferroloop" \
    "$VENV_PYTHON" tests/conformance/run_cpython_asyncio.py --loop ferroloop --group all

step "uvloop's own tests (from its sdist) on ferroloop" \
    "$VENV_PYTHON" tests/conformance/run_uvloop_tests.py

# Run from tests/ so that `import ferroloop` is the installed package.
step "pytest" bash -c 'cd tests && "$0" -m pytest -q -p no:cacheprovider .' "$VENV_PYTHON"

# One manylinux2014 wheel, built as scripts/build-wheels.sh builds them all,
# checked with auditwheel and run (the tour) in a fresh venv.
step "manylinux2014 wheel for $("${PYTHON:-python3}" -c 'import sys; print("CPython %d.%d" % sys.version_info[:2])')" \
    bash scripts/build-wheels.sh "$(command -v "${PYTHON:-python3}")"

if [ ${#failed[@]} -eq 0 ]; then
    echo "== verdict: PASS (cargo test, CPython test_asyncio, uvloop's tests, pytest, wheel)"
else
    echo "== verdict: FAIL ($(IFS=,; echo "${failed[*]}" | sed 's/,/, /g'))"
    exit 1
fi
