#!/usr/bin/env bash
# Install everything (tools/install.sh), then run every test suite: core and each plugin's own.
#   bash tools/test.sh [--fast] [PYTEST ARGS]
# --fast: the edit loop's tier, every test not marked `slow` (the long end-to-end runs: trainings of
# 100+ steps, torchrun, sweeps, the tour, SIGTERM/SIGKILL); CI and the README run everything.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=()
if [ "${1:-}" = "--fast" ]; then shift; tier=(-m "not slow"); fi
bash tools/install.sh test,tiktoken,cluster,lmeval
suites=(tests)
for t in plugins/*/tests; do [ -d "$t" ] && suites+=("$t"); done
# pytest exits non-zero when a test fails and (exit 5) when no test ran. One pytest-xdist worker per
# core; a module's tests stay on one worker (--dist loadfile), so module fixtures train once.
exec "${PYTHON:-python3}" -m pytest -n auto --dist loadfile "${suites[@]}" ${tier[@]+"${tier[@]}"} "$@"
