#!/usr/bin/env bash
# Runs the pytest suite and CPython's asyncio tests on other interpreters:
# each one gets a venv under ${VENVS:-/tmp/ferroloop-venvs} with the test
# dependencies and a build of this checkout. Not part of scripts/test.sh
# (that one tests the default python3); run it before a change that touches
# version-gated code.
#
#   bash scripts/test-versions.sh /root/.pyenv/versions/3.1{0,2,3}*/bin/python3
set -euo pipefail
cd "$(dirname "$0")/.."
venvs=${VENVS:-/tmp/ferroloop-venvs}
status=0
for python in "$@"; do
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    venv="$venvs/$version"
    echo "== Python $version ($python)"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.5,<2" -r scripts/test-requirements.txt
    CARGO_TARGET_DIR="target/py$version" "$venv/bin/pip" install -q --disable-pip-version-check \
        --no-build-isolation --force-reinstall --no-deps .
    (cd tests && "$venv/bin/python" -m pytest -q -p no:cacheprovider .) || status=1
    "$venv/bin/python" tests/conformance/run_cpython_asyncio.py --loop ferroloop --group all 2>&1 | grep -E "^(TOTAL|  test_.*(ERROR|FAIL))" || status=1
done
exit $status
