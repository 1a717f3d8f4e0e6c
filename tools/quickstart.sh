#!/usr/bin/env bash
# Install everything (tools/install.sh), then train the quickstart spec (offline, minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
exec "${PYTHON:-python3}" -m kinlm_core.cli run specs/quickstart.json "$@"
