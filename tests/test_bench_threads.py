"""Every benchmark tool (tools/bench_*.py, plugins/*/bench_*.py) pins its torch thread count: a
--threads option whose default is $OMP_NUM_THREADS (else a fixed number), torch.set_num_threads
called unconditionally, and the count printed with the figures (several processes sharing the
cores oversubscribe them otherwise: docs/performance.md)."""

import ast

import pytest

from helpers import ROOT

BENCHES = sorted([*ROOT.glob("tools/bench_*.py"), *ROOT.glob("plugins/*/bench_*.py")])


def _parents(tree):
    out = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            out[child] = node
    return out


@pytest.mark.parametrize("path", BENCHES, ids=[str(p.relative_to(ROOT)) for p in BENCHES])
def test_every_benchmark_pins_and_prints_its_threads(path):
    tree = ast.parse(path.read_text())
    parents = _parents(tree)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    option = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "add_argument"
              and any(isinstance(a, ast.Constant) and a.value == "--threads" for a in c.args)]
    assert option, "no --threads option"
    default = next((k.value for k in option[0].keywords if k.arg == "default"), None)
    assert default is not None and "OMP_NUM_THREADS" in ast.unparse(default), "--threads must default to $OMP_NUM_THREADS"
    sets = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "set_num_threads"]
    assert sets, "torch.set_num_threads is never called"

    def conditional(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.If):
                return True
            if isinstance(node, ast.FunctionDef):
                return False
        return False

    assert any(not conditional(c) for c in sets), "torch.set_num_threads is only called under a condition"
    prints = [ast.unparse(c) for c in calls if isinstance(c.func, ast.Name) and c.func.id == "print"]
    assert any("thread" in p for p in prints), "the thread count is not printed"
