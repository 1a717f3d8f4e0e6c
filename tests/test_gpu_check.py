"""tools/gpu_check.py: without CUDA it says so and exits 0; its MFU arithmetic; every section's
code runs (``--smoke``: on the CPU with tiny shapes)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from helpers import ROOT

TOOL = ROOT / "tools" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    r = subprocess.run([sys.executable, str(TOOL), "--out", "report.md"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("gpu_check: no CUDA device here") and "nothing measured" in r.stdout
    assert not (tmp_path / "report.md").exists()


def test_mfu_arithmetic_and_peak_table():
    g = load()
    # 6 N + 12 L d T: N = 1e6, 2 layers, d 64, context 128 -> 6e6 + 196,608
    assert g.flops_per_token(10**6, 2, 64, 128) == 6e6 + 12 * 2 * 64 * 128
    assert g.mfu(1000.0, 6e6, 1e10) == pytest.approx(0.6)
    assert g.mfu(1000.0, 6e6, None) is None
    assert g.peak_tflops("NVIDIA H100 PCIe") == 756.0 and g.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert g.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and g.peak_tflops("NVIDIA H200") == 989.0
    assert g.peak_tflops("Some Future GPU") is None and g.peak_tflops("Some Future GPU", 500) == 500.0


@pytest.mark.slow
def test_every_section_runs_on_tiny_shapes(tmp_path):
    r = subprocess.run([sys.executable, str(TOOL), "--smoke", "--skip", "gpt", "--out", "report.md"],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    for header in ("## hamiltonian paper configuration vs gpt", "## context_vector and cvfp: training throughput",
                   "## Generation: kinlm vs transformers generate", "## BLiMP speed",
                   "## Checkpoint window: throughput with a save in it",
                   "## The loss on bf16 logits: chunked against float32 logits",
                   "## Data preparation: `kinlm data prepare --workers N`"):
        assert header in report
    assert "### FlexAttention vs the reference mask path" in report and "cvfp ContextBlock, hoisted loop" in report
    assert "cvfp ContextBlock, compiled step" in report
    for model in ("context_vector", "cvfp"):  # both loops trained, and their logits compared
        assert f"{model} (" in report and "), loop compiled | " in report
        line = next(x for x in report.splitlines() if x.startswith(f"{model}: loop compiled against auto"))
        assert float(line.split("difference| ")[1].split(" ")[0]) < 1e-4, line
    assert "failed" not in report and "| 1 | " in report  # the generation table's batch-1 row
    assert "| async | " in report and "static = old tokens" in report and "| yes |" in report
    assert "gradients' largest difference 0 (0: bit for bit)" in report
    assert "| 134 | " in report  # BLiMP: 2 pairs of each of the 67 paradigms
    data = report.split("## Data preparation")[1].split("<sub>")[0]
    assert "| 1 | " in data and "| 2 | " in data and "x hamiltonian paper's" in data  # 1 and 2 workers, compared
