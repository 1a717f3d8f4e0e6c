#!/usr/bin/env bash
# Install everything (tools/install.sh), then run every test suite: core and each plugin's own.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh test,tiktoken
suites=(tests)
for t in plugins/*/tests; do [ -d "$t" ] && suites+=("$t"); done
# pytest exits non-zero when a test fails and (exit 5) when no test ran
exec "${PYTHON:-python3}" -m pytest "${suites[@]}" "$@"
