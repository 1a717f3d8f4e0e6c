"""Helpers shared by the core tests."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from kinlm_core import hookimpl


ROOT = Path(__file__).resolve().parents[1]


def make_dist(where: Path, dist: str, module: str, code: str, version: str = "0.1.0") -> Path:
    """A real (installed-looking) distribution: a module plus its .dist-info with a `kinlm`
    entry point, importable once `where` is on sys.path. No pip needed."""
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{module}.py").write_text(textwrap.dedent(code))
    info = where / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[kinlm]\n{module} = {module}\n")
    return where


def kinlm(*args, env=None, cwd=None, timeout=300):
    """Run the CLI in a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "kinlm_core.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


TINY = {
    "name": "tiny",
    "seed": 1,
    "data": {"type": "embedded", "corpus": "tinyshakespeare", "max_docs": 400},
    "tokenizer": {"type": "byte"},
    "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32},
    "train": {"max_steps": 6, "batch_size": 4, "block_size": 32, "lr": 3e-3, "warmup_steps": 1,
              "checkpoint_every": 3, "log_every": 2},
    "eval": {"every": 3, "batches": 2},
}


FIXTURES = ROOT / "tests" / "fixtures"

KILLER = """
import os, signal
from kinlm_core import hookimpl

@hookimpl
def kinlm_step_end(run, step, metrics):
    if step == int(os.environ.get("KINLM_TEST_KILL_AT", "-1")):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def fixture_site(where: Path, *modules: str, killer: bool = False) -> Path:
    """A folder of installed-looking distributions for the fixture plugins in tests/fixtures
    (and a plugin that SIGKILLs its process at step $KINLM_TEST_KILL_AT); put it on PYTHONPATH."""
    for m in modules:
        make_dist(where, m.replace("_", "-"), m, (FIXTURES / f"{m}.py").read_text())
    if killer:
        make_dist(where, "kinlm-test-killer", "kinlm_test_killer", KILLER)
    return where


def torchrun(*args, env=None, timeout=300):
    """`kinlm ARGS` under torchrun with 2 CPU ranks."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "kinlm_core.cli", *args], capture_output=True, text=True, env=full_env, timeout=timeout)


class TermAt:
    """A lifecycle plugin that sends this process SIGTERM at the end of a step (a cluster preemption);
    register it with ``get_manager().pm.register(TermAt(step))``."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def kinlm_step_end(self, run, step, metrics):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
