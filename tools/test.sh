#!/usr/bin/env bash
# Install kinlm, every first-party plugin and the test tools, then run every test suite.
# torch is pinned and installed first: an unpinned torch would pull GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
plugins=()
for p in plugins/*/; do [ -f "$p/pyproject.toml" ] && plugins+=(-e "$p"); done
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,tiktoken]" "${plugins[@]}"
suites=(tests)
for t in plugins/*/tests; do [ -d "$t" ] && suites+=("$t"); done
# pytest exits non-zero when a test fails and (exit 5) when no test ran
exec "$PY" -m pytest "${suites[@]}" "$@"
