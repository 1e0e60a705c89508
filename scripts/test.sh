#!/usr/bin/env bash
# Runs every test: builds and installs ferroloop, then the Rust unit tests,
# the pytest suite, and CPython's own asyncio tests on ferroloop.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

echo "== installing build and test dependencies"
"$PYTHON" -m pip install -q --disable-pip-version-check "maturin>=1.5,<2" "pytest>=7" prometheus_client aiohttp uvicorn httptools httpx websockets asyncpg redis hypothesis 2>&1 | grep -v "Running pip as the 'root' user" || true
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "== installing PostgreSQL (the asyncpg tests start a throwaway server)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql openssl; } >/dev/null
fi
echo "== building and installing ferroloop"
"$PYTHON" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps . 2>&1 | grep -v "Running pip as the 'root' user" || true

echo "== cargo test"
# The Rust tests link against libpython; tell the loader where it lives.
libdir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" PYO3_PYTHON="$PYTHON" cargo test --quiet

echo "== CPython test_asyncio (core and network modules) on ferroloop"
"$PYTHON" tests/conformance/run_cpython_asyncio.py --loop ferroloop --group all

echo "== pytest"
# Run from tests/ so that `import ferroloop` is the installed package.
(cd tests && "$PYTHON" -m pytest -q -p no:cacheprovider .)
