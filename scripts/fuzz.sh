#!/usr/bin/env bash
# Runs the differential fuzz test (tests/test_fuzz_differential.py) longer
# than the test command does, with a random seed, and groups what it finds.
#
#   bash scripts/fuzz.sh                 # 5000 sequences, random seed
#   FERROLOOP_FUZZ_EXAMPLES=300 FERROLOOP_FUZZ_SEED=42 bash scripts/fuzz.sh
#   FERROLOOP_FUZZ_STOP=1 bash scripts/fuzz.sh    # stop at (and shrink) the first difference
#
# By default every difference is minimised and collected instead of failing
# the run, and a summary grouped by difference is printed at the end
# (the raw JSON lines stay in $FERROLOOP_FUZZ_OUT, default
# /tmp/ferroloop-fuzz.jsonl). The working tree's python/ is copied to a
# temporary directory first, so that rebuilding the native module during a
# long run cannot swap the library under it (without an in-tree build, from
# scripts/dev-build.sh, a build is installed into the project virtual
# environment and tested); FERROLOOP_FUZZ_PYTHONPATH overrides what is
# tested. pytest and hypothesis are installed into .venv (scripts/venv.sh). If the process crashes (segfault, abort), the
# sequence that was running is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
venv_install "for the fuzz test" "pytest>=7" hypothesis
PYTHON=$VENV_PYTHON

export FERROLOOP_FUZZ_EXAMPLES=${FERROLOOP_FUZZ_EXAMPLES:-5000}
export FERROLOOP_FUZZ_SEED=${FERROLOOP_FUZZ_SEED:-$RANDOM$RANDOM}
out=${FERROLOOP_FUZZ_OUT:-/tmp/ferroloop-fuzz.jsonl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export FERROLOOP_FUZZ_TRACE="$work/current-sequence.txt"
export HYPOTHESIS_STORAGE_DIRECTORY="$work/hypothesis"

if [ -n "${FERROLOOP_FUZZ_PYTHONPATH:-}" ]; then
    pythonpath=$FERROLOOP_FUZZ_PYTHONPATH
elif compgen -G "python/ferroloop/_native*.so" >/dev/null; then
    cp -r python "$work/python"
    pythonpath="$work/python"
else
    venv_install_ferroloop
    pythonpath=""
fi
if [ "${FERROLOOP_FUZZ_STOP:-0}" != 1 ]; then
    rm -f "$out"
    export FERROLOOP_FUZZ_COLLECT="$out"
fi

echo "== fuzzing: $FERROLOOP_FUZZ_EXAMPLES sequences, seed $FERROLOOP_FUZZ_SEED, ferroloop from ${pythonpath:-$FERROLOOP_VENV}"
start=$(date +%s)
(cd tests && PYTHONPATH="$pythonpath" "$PYTHON" -m pytest -q -p no:cacheprovider -p no:warnings \
    test_fuzz_differential.py -k test_same_outcomes_as_asyncio)
status=$?
echo "== $(( $(date +%s) - start )) s, pytest exit status $status"
if [ "$status" -gt 1 ] && [ -s "$FERROLOOP_FUZZ_TRACE" ]; then
    echo "== the process did not finish normally; the sequence it was running:"
    cat "$FERROLOOP_FUZZ_TRACE"
fi

if [ -n "${FERROLOOP_FUZZ_COLLECT:-}" ] && [ -s "$out" ]; then
    "$PYTHON" - "$out" <<'EOF'
import collections
import json
import sys

groups: dict[str, list[dict]] = collections.defaultdict(list)
with open(sys.argv[1], encoding="utf-8") as lines:
    for line in lines:
        entry = json.loads(line)
        groups[entry["key"]].append(entry)
print(f"== {len(groups)} distinct differences (raw: {sys.argv[1]})")
for number, (key, entries) in enumerate(sorted(groups.items(), key=lambda kv: -len(kv[1])), start=1):
    smallest = min(entries, key=lambda entry: len(entry["steps"]))
    print(f"\n--- #{number}: seen {len(entries)} times")
    print(smallest["explain"])
EOF
elif [ -n "${FERROLOOP_FUZZ_COLLECT:-}" ]; then
    echo "== no differences"
fi
exit "$status"
