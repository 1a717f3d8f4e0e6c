#!/usr/bin/env bash
# Install everything (tools/install.sh), then train the quickstart spec (offline, minutes on 2 CPU cores).
# Extra arguments go to `kinlm run` (e.g. --set train.max_steps=100). The exit code is kinlm run's
# (0 finished, 2 bad input, 75 stopped by SIGTERM/SIGINT with a checkpoint: see docs/specs.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
"${PYTHON:-python3}" -m kinlm_core.cli run specs/quickstart.json "$@"
echo "next: kinlm tensorboard runs/ ; kinlm generate runs/quickstart@latest --prompt \"ROMEO:\" (README.md: A tour)" >&2
