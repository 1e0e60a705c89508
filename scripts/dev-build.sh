#!/usr/bin/env bash
# Builds the native module without LTO and drops it into python/ferroloop, so
# `PYTHONPATH=python` runs the working tree without a pip install.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile fast --quiet
suffix=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
cp target/fast/lib_native.so "python/ferroloop/_native${suffix}"
