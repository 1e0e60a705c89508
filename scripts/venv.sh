# Sourced by the project's scripts: the project virtual environment.
#
#   . scripts/venv.sh
#   venv_install "what it is for" package...   # pip install into .venv, saying what
#   venv_install_ferroloop                     # build this checkout and install it
#   "$VENV_PYTHON" ...
#
# The environment is .venv in the checkout (FERROLOOP_VENV overrides it),
# made on first use from $PYTHON (default python3) with `python -m venv`.
# Nothing is installed into the interpreter it is made from.

FERROLOOP_VENV=${FERROLOOP_VENV:-$PWD/.venv}
VENV_PYTHON="$FERROLOOP_VENV/bin/python"

if [ ! -x "$VENV_PYTHON" ]; then
    echo "== making the project virtual environment $FERROLOOP_VENV (from ${PYTHON:-python3})"
    "${PYTHON:-python3}" -m venv "$FERROLOOP_VENV"
fi

venv_install() {
    local purpose=$1
    shift
    echo "== installing into $FERROLOOP_VENV, $purpose: $*"
    "$VENV_PYTHON" -m pip install -q --disable-pip-version-check "$@"
}

venv_install_ferroloop() {
    venv_install "to build ferroloop" "maturin>=1.5,<2"
    echo "== building ferroloop (cargo, release profile: a minute or two the first time) and installing it into $FERROLOOP_VENV"
    local log status
    log=$(mktemp)
    set +e
    # pip -v passes cargo's progress through; one line per crate compiled is shown.
    "$VENV_PYTHON" -m pip install -v --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps . 2>&1 \
        | tee "$log" | grep -E --line-buffered "^ *(Compiling|Finished|Successfully installed)"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
        rm -f "$log"
        echo "== building ferroloop failed" >&2
        return 1
    fi
    rm -f "$log"
}
