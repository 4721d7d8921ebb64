"""benchmarks/bench_search.py: its arithmetic on hand-made studies, and --smoke end to end (fields, never timings)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_best_so_far_and_the_share_of_the_budget():
    import bench_search as b

    assert b.best_so_far([0.1, None, 0.3, math.nan, 0.2], budget=6) == [0.1, 0.1, 0.3, 0.3, 0.3, 0.3]
    assert b.best_so_far([0.1, 0.5, 0.9], budget=2) == [0.1, 0.5]  # results past the budget do not count
    assert b.share_to_reach([0.1, 0.3, 0.3, 0.5], 0.3) == 0.5
    assert b.share_to_reach([0.1, 0.3], 0.4) == math.inf


def _run(method: str, seed: int, curve: list[float], test_h: float) -> dict:
    return {"method": method, "seed": seed, "curve": curve, "best": curve[-1], "trials": 3, "wall_s": 1.0,
            "test": {"H": test_h}}


def test_analysis_of_hand_made_studies():
    import bench_search as b

    runs = [_run("random", 0, [0.1, 0.2, 0.3, 0.4], 0.30), _run("random", 1, [0.2, 0.2, 0.2, 0.6], 0.35),
            _run("random", 2, [0.1, 0.1, 0.5, 0.5], 0.40),
            _run("tpe+asha", 0, [0.3, 0.5, 0.5, 0.5], 0.45), _run("tpe+asha", 1, [0.1, 0.6, 0.6, 0.7], 0.50),
            _run("tpe+asha", 2, [0.2, 0.2, 0.2, 0.2], 0.20)]
    f = b.analyse(runs, budget=4)
    assert f["random_final_best_median"] == 0.5  # median of the seeds' curves at the budget: 0.4, 0.6, 0.5
    tpe = f["methods"]["tpe+asha"]
    assert tpe["median_curve"] == [0.2, 0.5, 0.5, 0.5]
    assert tpe["share_of_random_budget"] == 0.5  # the median curve reaches 0.5 at 2 of 4 trial-epochs
    assert tpe["share_per_seed"] == [0.5, 0.5, math.inf]  # seed 2 never reaches random's 0.5
    assert tpe["share_per_seed_median"] == 0.5 and tpe["test_H"][1] == 0.45
    assert f["methods"]["random"]["share_of_random_budget"] == 1.0
    lines = b.report_lines(f, "python benchmarks/bench_search.py")
    assert lines[0] == b.HEADER and lines[-1].endswith("misses the target of <= 40%")
    row = next(line for line in lines if line.startswith("| tpe+asha |"))
    assert "50% / 50%" in row and "45.0 [32.5, 47.5]" in row


@pytest.mark.slow
def test_smoke_runs_every_method_and_writes_table_plot_and_json(tmp_path):
    out = tmp_path / "search.json"
    done = subprocess.run([sys.executable, str(BENCH / "bench_search.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = done.stdout[done.stdout.index("== search efficiency =="):]
    for method in ("random", "random+asha", "tpe+asha", "tpe+asha-old"):
        assert f"| {method} | 1 |" in report, report
    assert "reaches random search's final best validation H" in report and "the target of <= 40%" in report
    saved = json.loads(out.read_text())
    assert {r["method"] for r in saved["runs"]} == {"random", "random+asha", "tpe+asha", "tpe+asha-old"}
    for run in saved["runs"]:
        assert len(run["curve"]) == 6 and 0 <= run["test"]["H"] <= 1
        assert {"alpha", "gamma"} <= set(run["best_params"])  # the refit's alpha and gamma are the chosen ones
    assert out.with_suffix(".png").stat().st_size > 0
    assert len(out.with_suffix(".runs.jsonl").read_text().splitlines()) == 4
