"""benchmarks/bench_step.py --quick runs end to end and prints a complete table (no timing assertions)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"
COLUMNS = ["mode", "train img/s", "eval img/s", "peak train MiB", "peak eval MiB",
           "train GFLOP/s", "matmul GFLOP/s", "efficiency", "best-repeat eff"]


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_quick_benchmark_prints_table():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    assert re.split(r"\s{2,}", lines[header].strip()) == COLUMNS
    rows = [line.split() for line in lines[header + 2:] if line.split() and line.split()[0] in ("float32", "bf16-autocast")]
    assert [r[0] for r in rows] == ["float32", "bf16-autocast"]
    flops = next(line for line in lines if line.startswith("training FLOPs per step"))
    assert float(flops.split(":")[1].split(";")[0]) > 0
    for row in rows:
        # Rates, not how fast they are: at the tiny shapes on a busy machine a GFLOP/s figure or an
        # efficiency can round to 0.0 in the table, so only their sign is checked.
        assert len(row) == len(COLUMNS) and all(float(x) >= 0 for x in row[1:]), row
    assert any(line.startswith("fastest mode:") for line in lines)
