"""benchmarks/bench_protocol_gap.py: each procedure's selection rule, and a quick run end to end."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_protocol_gap.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_protocol_gap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def epoch(H: float, H_best: float, best_gamma: float, curve_H: list[float]) -> dict:
    return {"H": H, "H_grid": H_best, "grid_gamma": best_gamma, "gamma": 2.0, "curve_gamma": [0.0, 1.0, 2.0],
            "curve_H": curve_H}


def test_each_procedure_selects_on_its_own_split(bench):
    test = [epoch(0.30, 0.35, 1.0, [0.20, 0.35, 0.30]), epoch(0.40, 0.50, 2.0, [0.10, 0.45, 0.50]),
            epoch(0.38, 0.42, 0.0, [0.42, 0.40, 0.38])]
    val = [epoch(0.5, 0.60, 1.0, []), epoch(0.5, 0.50, 2.0, []), epoch(0.5, 0.60, 0.0, [])]  # a tie: the first
    out = bench.assess(7, test, val)
    assert (out.paper, out.test_epoch, out.test_gamma) == (0.50, 2, 2.0)  # best epoch and gamma by test H
    assert out.paper_epoch == 0.40 and out.no_selection == 0.38
    # validation chose epoch 1 and gamma 1.0: the test H of that model at that gamma, whatever test says elsewhere
    assert (out.leak_free, out.val_epoch, out.val_gamma) == (0.35, 1, 1.0)
    lines = bench.report([out, bench.assess(8, test[:1], val[:1])], "synthetic", 3, 2.0)
    assert lines[0] == bench.HEADER and any(line.startswith("gap (a) - (b), paired by seed: +") for line in lines)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_quick_run_prints_the_table(synthetic_root, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data-root", str(synthetic_root), "--json",
                           str(tmp_path / "gap.json")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout[done.stdout.index("== protocol gap =="):].splitlines()
    assert [line.split()[0] for line in table[2:6]] == ["(a)", "(a')", "(b)", "(c)"]
    assert table[6].startswith("gap (a) - (b), paired by seed:")
    outcomes = json.loads((tmp_path / "gap.json").read_text())
    assert [o["seed"] for o in outcomes] == [0, 1]
    for o in outcomes:  # selecting on test can only do as well or better on test than any other choice
        assert o["paper"] >= max(o["leak_free"], o["paper_epoch"], o["no_selection"])
