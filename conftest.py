"""Shared by every test suite of the repository (core and plugins).

Under pytest-xdist (`tools/test.sh` runs two workers) each worker gets its own kinlm data cache
unless KINLM_CACHE is set, so two workers never prepare the same corpus into one folder at once.
"""

import os
from pathlib import Path

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and "KINLM_CACHE" not in os.environ:
    os.environ["KINLM_CACHE"] = str(Path.home() / ".cache" / f"kinlm-{_worker}")
