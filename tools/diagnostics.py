"""The synthetic diagnostic suite: a thin wrapper around ``kinlm diagnose`` (kinlm_core/diagnose/).

    python tools/diagnostics.py --plan               # = kinlm diagnose --plan
    python tools/diagnostics.py                      # = kinlm diagnose --doc docs/diagnostics.md

Every option is ``kinlm diagnose``'s (``kinlm diagnose --help``); without ``--doc`` the wrapper writes
the repository's page, docs/diagnostics.md, as this script always did.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    from kinlm_core.cli import main as kinlm

    args = list(sys.argv[1:] if argv is None else argv)
    if "--doc" not in args and not any(a.startswith("--doc=") for a in args):
        args += ["--doc", str(ROOT / "docs" / "diagnostics.md")]
    kinlm(["diagnose", *args], prog_name="kinlm")


if __name__ == "__main__":
    main()
