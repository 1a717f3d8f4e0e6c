"""tools/results.py, the command behind docs/results.md: on fake benchmark runs it writes the page
with compare's table and figures and computes each claim's verdict from the seeds."""

import subprocess
import sys

from helpers import ROOT
from test_compare import fake_run


def bench(root, name, blimps, bpbs):
    for i, (bl, b) in enumerate(zip(blimps, bpbs)):
        fake_run(root / name / f"seed_{i}", name=name, seed=i, blimp=bl,
                 evals=[(3, 9.0, b + 1.0, 3000), (5, 8.0, b + 0.5, 5000), (10, 7.0, b, 10000)])


def test_results_page_verdicts_come_from_the_runs(tmp_path):
    runs = tmp_path / "runs"
    bench(runs, "bench-gpt", (0.55, 0.56, 0.55), (2.60, 2.61, 2.62))
    bench(runs, "bench-gpt-vt", (0.60, 0.61, 0.62), (2.60, 2.61, 2.62))  # clearly better on BLiMP
    bench(runs, "bench-gpt-accel-penalty", (0.55, 0.57, 0.56), (2.60, 2.61, 2.62))  # within noise
    bench(runs, "bench-hamiltonian", (0.5, 0.5, 0.5), (2.90, 2.91, 2.92))  # slower at every eval
    r = subprocess.run([sys.executable, "tools/results.py", "--no-train", "--runs", str(runs),
                        "--docs", str(tmp_path / "docs")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    page = (tmp_path / "docs" / "results.md").read_text()
    sections = {s.split("\n", 1)[0]: s for s in page.split("### ")[1:]}
    vt = next(v for k, v in sections.items() if k.startswith("VT embeddings"))
    assert "`bench-gpt-vt` 0.6100 ± 0.0100 against `bench-gpt` 0.5533 ± 0.0058" in vt
    assert "**Verdict: reproduced" in vt
    accel = next(v for k, v in sections.items() if k.startswith("The acceleration penalty"))
    assert "**Verdict: not reproduced: the difference (+0.0067) is within seed noise" in accel
    ham = next(v for k, v in sections.items() if k.startswith("The Hamiltonian"))
    assert "**Verdict (at half the budget): contradicted" in ham
    assert "no seed reaches the baseline's final value" in ham
    assert "not testable: fewer than 2 finished seeds" in sections[next(k for k in sections if k.startswith("DiffWrapper"))]
    assert "Not in the table: `specs/benchmark/mamba.json`" in page
    table = page.split("## The table")[1].split("## Figures")[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "/{seed_0,seed_1,seed_2}" in ln]
    assert len(rows) == 4 and "bench-hamiltonian" in rows[-1] and "| 2.910 ± 0.010 |" in rows[-1]
    for f in ("compare.md", "compare.csv", "bpb_vs_tokens.png", "blimp_fields.png"):
        assert (tmp_path / "docs" / "results" / f).stat().st_size > 100
