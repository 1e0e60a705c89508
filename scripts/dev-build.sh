#!/usr/bin/env bash
# Builds the native module without LTO and drops it into python/ferroloop, so
# `PYTHONPATH=python` runs the working tree without a pip install.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile fast --quiet
suffix=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
# Copy then rename: overwriting a shared library in place corrupts any
# process that has it mapped.
target="python/ferroloop/_native${suffix}"
cp target/fast/lib_native.so "${target}.tmp"
mv -f "${target}.tmp" "${target}"
