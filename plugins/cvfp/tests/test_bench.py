"""The phase-1 benchmark runs both modes through the engine on the same tokens and reports what the README quotes."""

import pytest
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench_phase1.py"


@pytest.mark.slow
def test_bench_reports_both_modes_on_the_same_tokens(tmp_path_factory):
    env = {**os.environ, "KINLM_CACHE": os.environ.get("KINLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))}
    r = subprocess.run([sys.executable, str(BENCH), "--tokens", "60", "--d-model", "16", "--layers", "2",
                        "--iterations", "3", "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-1000:]
    out = json.loads(r.stdout)
    par, seq = out["parallel"], out["sequential"]
    assert par["iterations"] == seq["iterations"] == 3  # iteration 0 and two optimizer steps each
    assert par["initial_er_pct"] == seq["initial_er_pct"]  # same weights, same tokens: the same iteration 0
    assert par["fixed_point_mse"] < 1e-10 and seq["fixed_point_mse"] < 1e-10  # the note's reading
    assert out["speedup"] == seq["seconds"] / par["seconds"]
