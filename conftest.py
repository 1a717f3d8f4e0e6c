"""Shared by every test suite of the repository (core and plugins).

`tools/test.sh` runs the suites under pytest-xdist, one worker per core (`-n auto`). Each worker
then gets its own kinlm data cache unless KINLM_CACHE is set (two workers never prepare the same
corpus into one folder at once) and one torch thread (OMP_NUM_THREADS, inherited by the `kinlm`
processes the tests start): two workers of two threads each on two cores would oversubscribe them.
"""

import os
from pathlib import Path

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    if "KINLM_CACHE" not in os.environ:
        os.environ["KINLM_CACHE"] = str(Path.home() / ".cache" / f"kinlm-{_worker}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
