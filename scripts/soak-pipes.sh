#!/usr/bin/env bash
# Moves 1 GiB (or FERROLOOP_PIPE_SOAK_MIB MiB) through a pipe into a
# StreamReader on ferroloop and compares sha256 on both ends.
set -euo pipefail
cd "$(dirname "$0")/../tests"
PYTHON=${PYTHON:-python3}
FERROLOOP_PIPE_SOAK_MIB=${FERROLOOP_PIPE_SOAK_MIB:-1024} \
  "$PYTHON" -m pytest -q -p no:cacheprovider "test_pipes.py::test_256_mib_through_a_pipe_into_a_stream_reader_arrives_intact"
