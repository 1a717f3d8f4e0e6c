#!/usr/bin/env bash
# Install kinlm and its plugins, then train the quickstart spec (offline, ~5 min on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
plugins=()
for p in plugins/*/; do [ -f "$p/pyproject.toml" ] && plugins+=(-e "$p"); done
"$PY" -m pip install --quiet --disable-pip-version-check -e . "${plugins[@]}"
exec kinlm run specs/quickstart.json "$@"
