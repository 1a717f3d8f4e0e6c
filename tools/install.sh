#!/usr/bin/env bash
# Install kinlm and every first-party plugin (editable) into $PYTHON (default python3).
# torch is pinned and installed first: an unpinned torch would pull GBs of CUDA packages.
# Usage: tools/install.sh [EXTRAS]     e.g. tools/install.sh test,tiktoken
# EXTRAS go to kinlm-core and, each one, to every plugin that declares it: `test` brings pytest and
# each plugin's test dependencies, so `python -m pytest plugins/NAME/tests` works.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${1:+[$1]}
"$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
plugins=()
for p in plugins/*/; do
  [ -f "$p/pyproject.toml" ] || continue
  declared=$(awk '/^\[/{on = ($0 == "[project.optional-dependencies]")} on && /^[A-Za-z0-9_-]+ *=/{sub(/ *=.*/, ""); print}' "$p/pyproject.toml")
  own=$(tr ',' '\n' <<<"${1:-}" | grep -Fxf <(echo "$declared") | paste -sd, - || true)
  plugins+=(-e "${p%/}${own:+[$own]}")
done
"$PY" -m pip install --quiet --disable-pip-version-check -e ".${extras}" "${plugins[@]}"
