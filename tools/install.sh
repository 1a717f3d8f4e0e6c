#!/usr/bin/env bash
# Install kinlm and every first-party plugin (editable) into $PYTHON (default python3).
# torch is pinned and installed first: an unpinned torch would pull GBs of CUDA packages.
# Usage: tools/install.sh [EXTRAS]     e.g. tools/install.sh test,tiktoken
# EXTRAS go to kinlm-core and to every plugin that has them: `test` brings pytest and each plugin's
# test dependencies, so `python -m pytest plugins/NAME/tests` works (pip notes a plugin without one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${1:+[$1]}
"$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
plugins=()
for p in plugins/*/; do [ -f "$p/pyproject.toml" ] && plugins+=(-e "${p%/}${extras}"); done
"$PY" -m pip install --quiet --disable-pip-version-check -e ".${extras}" "${plugins[@]}"
