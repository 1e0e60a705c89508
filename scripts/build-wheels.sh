#!/usr/bin/env bash
# Builds manylinux2014 (manylinux_2_17) x86_64 wheels of ferroloop, one per
# CPython interpreter, into dist/, and checks each one:
#
#   bash scripts/build-wheels.sh                      # CPython 3.10-3.13, found with pyenv or on PATH
#   bash scripts/build-wheels.sh /path/to/python3.12  # only the interpreters given
#
# Needs only a Rust toolchain (with the x86_64-unknown-linux-gnu target) and
# the Python package index: maturin, ziglang (zig as the linker, linking
# against glibc 2.17 whatever glibc this machine has) and auditwheel are
# installed into a tools venv, target/wheels-venv (WHEELS_VENV overrides it),
# made from ${PYTHON:-python3}. Cargo builds in target/wheels
# (CARGO_TARGET_DIR overrides it), apart from the other builds.
#
# Each wheel is checked with `auditwheel show` (its platform tag must be
# manylinux_2_17_x86_64 or older), then installed into a fresh temporary venv
# of its own interpreter, where the tour (examples/tour.py) runs on it.
# Set WHEELS_CHECK=import to run a one-line import check instead of the tour.
# Ends with a table: interpreter, wheel, size, auditwheel's tag, test result.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=x86_64-unknown-linux-gnu
POLICY=manylinux_2_17_x86_64
CHECK=${WHEELS_CHECK:-tour}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/wheels}

# --- the interpreters ---------------------------------------------------------

find_python() { # minor version (3.12) -> path of a working interpreter, or nothing
    local version=$1 candidate latest prefix
    if command -v pyenv >/dev/null 2>&1; then
        latest=$(pyenv latest "$version" 2>/dev/null) || latest=
        if [ -n "$latest" ] && prefix=$(pyenv prefix "$latest" 2>/dev/null); then
            candidate="$prefix/bin/python$version"
            if [ -x "$candidate" ] && "$candidate" -c 'import venv' >/dev/null 2>&1; then
                echo "$candidate"
                return
            fi
        fi
    fi
    candidate=$(command -v "python$version" 2>/dev/null) || return 0
    if "$candidate" -c 'import venv' >/dev/null 2>&1; then
        echo "$candidate"
    fi
}

interpreters=()
if [ $# -gt 0 ]; then
    interpreters=("$@")
else
    for version in 3.10 3.11 3.12 3.13; do
        found=$(find_python "$version")
        if [ -n "$found" ]; then
            interpreters+=("$found")
        else
            echo "== no CPython $version found (pyenv or python$version on PATH): skipped" >&2
        fi
    done
fi
if [ ${#interpreters[@]} -eq 0 ]; then
    echo "== no interpreters to build for" >&2
    exit 1
fi

# --- the tools ------------------------------------------------------------------

FERROLOOP_VENV=${WHEELS_VENV:-$ROOT/target/wheels-venv}
. scripts/venv.sh
venv_install "to build and check wheels" "maturin>=1.5,<2" ziglang auditwheel
TOOLS=$FERROLOOP_VENV/bin
# maturin finds zig as `python3 -m ziglang`: the tools venv comes first on PATH.
export PATH="$TOOLS:$PATH"
echo "== $("$TOOLS/maturin" --version), zig $("$VENV_PYTHON" -m ziglang version), auditwheel $("$VENV_PYTHON" -c 'import importlib.metadata as m; print(m.version("auditwheel"))')"
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    if [ "$(rustc -vV | sed -n 's/^host: //p')" != "$TARGET" ]; then
        echo "== the Rust target $TARGET is not installed (rustup target add $TARGET)" >&2
        exit 1
    fi
fi

mkdir -p dist
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Prints the glibc minor version a manylinux tag stands for (manylinux2014 -> 17).
glibc_minor() {
    case $1 in
        manylinux1_*) echo 5 ;;
        manylinux2010_*) echo 12 ;;
        manylinux2014_*) echo 17 ;;
        manylinux_2_*) echo "$1" | sed -E 's/^manylinux_2_([0-9]+)_.*/\1/' ;;
        *) echo 999 ;;
    esac
}

rows=()
status=0
for python in "${interpreters[@]}"; do
    version=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
    echo
    echo "== CPython $version ($python): building a $POLICY wheel (cargo, release profile, in $CARGO_TARGET_DIR)"
    out="$work/out-$version"
    if ! "$TOOLS/maturin" build --release --zig --compatibility manylinux2014 \
        --target "$TARGET" --interpreter "$python" --out "$out"; then
        rows+=("$version|-|-|-|build failed")
        status=1
        continue
    fi
    built=("$out"/*.whl)
    if [ ${#built[@]} -ne 1 ]; then
        echo "== expected one wheel, maturin made: ${built[*]}" >&2
        rows+=("$version|-|-|-|not one wheel")
        status=1
        continue
    fi
    name=$(basename "${built[0]}")
    mv -f "${built[0]}" "dist/$name"
    wheel="$ROOT/dist/$name"
    size=$(du -k "$wheel" | cut -f1)

    echo "== auditwheel show dist/$name"
    report=$("$TOOLS/auditwheel" show "$wheel" 2>&1) || true
    echo "$report"
    tag=$(echo "$report" | tr -d '\n' | sed -nE 's/.*following platform tag: *"?([a-z0-9_]+)"?.*/\1/p')
    result=ok
    if [ -z "$tag" ]; then
        echo "== auditwheel named no platform tag" >&2
        tag="?"
        result="auditwheel: no tag"
    elif [ "$(glibc_minor "$tag")" -gt 17 ] || [[ $tag != *_x86_64 ]]; then
        echo "== auditwheel says $tag: needs more than $POLICY" >&2
        result="auditwheel: $tag"
    elif [[ $name != *manylinux_2_17_x86_64* ]]; then
        echo "== the wheel's name does not carry $POLICY: $name" >&2
        result="name lacks $POLICY"
    fi
    if [ "$result" != ok ]; then
        rows+=("$version|$name|${size} KiB|$tag|$result")
        status=1
        continue
    fi

    if [ "$(uname -m)" != x86_64 ]; then
        rows+=("$version|$name|${size} KiB|$tag|not run (host is $(uname -m))")
        continue
    fi
    venv="$work/venv-$version"
    echo "== making a temporary venv $venv (CPython $version) and installing into it, from the file only: dist/$name"
    "$python" -m venv "$venv"
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps "$wheel"; then
        rows+=("$version|$name|${size} KiB|$tag|install failed")
        status=1
        continue
    fi
    # Run from outside the checkout, so only the installed wheel can be imported.
    if [ "$CHECK" = import ]; then
        echo "== import check on CPython $version"
        test_cmd=("$venv/bin/python" -c 'import asyncio, ferroloop; print(ferroloop.__file__); print(ferroloop.run(asyncio.sleep(0, "ok")))')
    else
        echo "== the tour on CPython $version: $venv/bin/python examples/tour.py"
        "$venv/bin/python" -c 'import ferroloop; print("ferroloop from", ferroloop.__file__)'
        test_cmd=("$venv/bin/python" "$ROOT/examples/tour.py")
    fi
    started=$SECONDS
    if (cd "$work" && "${test_cmd[@]}"); then
        rows+=("$version|$name|${size} KiB|$tag|$CHECK passed ($((SECONDS - started)) s)")
    else
        rows+=("$version|$name|${size} KiB|$tag|$CHECK FAILED")
        status=1
    fi
done

echo
echo "== wheels in dist/ ($POLICY, checked with auditwheel show and the $CHECK):"
printf '%s\n' "CPython|wheel|size|auditwheel tag|$CHECK" "${rows[@]}" | column -t -s '|'
if [ $status -eq 0 ]; then
    echo "== all ${#rows[@]} wheels built and passed"
else
    echo "== some wheels failed (see above)"
fi
exit $status
