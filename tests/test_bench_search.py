"""benchmarks/bench_search.py: its arithmetic on hand-made studies, and --smoke end to end (fields, never timings)."""
from __future__ import annotations

import json
import math
import re
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


def test_random_asha_is_the_second_reference_with_unpaired_shares_and_the_warm_start_line():
    import bench_search as b

    runs = [_run("random+asha", 0, [0.2, 0.4, 0.4, 0.4], 0.3), _run("random+asha", 1, [0.1, 0.1, 0.3, 0.6], 0.3),
            _run("tpe+asha", 0, [0.1, 0.5, 0.5, 0.5], 0.4), _run("tpe+asha", 1, [0.1, 0.2, 0.2, 0.2], 0.4),
            _run("tpe+asha-warm", 0, [0.6, 0.6, 0.6, 0.6], 0.5), _run("tpe+asha-warm", 1, [0.3, 0.3, 0.7, 0.7], 0.5)]
    f = b.analyse(runs, budget=4)
    assert f["final_best_median"] == {"random+asha": 0.5} and f["random_final_best_median"] is None
    tpe = f["methods"]["tpe+asha"]["shares"]["random+asha"]
    assert tpe["per_seed"] == [0.5, math.inf]  # seed 0 reaches 0.4 at 2 of 4; seed 1 never reaches 0.6
    assert tpe["all_pairs_median"] == math.inf and tpe["all_pairs_reached"] == 0.25  # 1 of the 4 pairs
    itself = f["methods"]["random+asha"]["shares"]["random+asha"]
    assert itself["per_seed"] == [0.5, 1.0] and itself["all_pairs_reached"] == 0.5  # other seeds only: 2 pairs
    warm = f["methods"]["tpe+asha-warm"]["shares"]["tpe+asha"]
    assert warm["per_seed"] == [0.25, 0.25]  # against the cold start's final best of the same seed (0.5, 0.2)
    lines = b.report_lines(f, "python benchmarks/bench_search.py")
    assert any(line.endswith("misses the target of <= 60%") and "after not reached per seed" in line for line in lines)
    assert lines[-1].startswith("tpe+asha-warm (warm-started from a tpe+asha study on a second benchmark) reaches "
                                "the cold start's final best after 25% of its budget")
    row = next(line for line in lines if line.startswith("| tpe+asha |"))
    assert "| n/a / n/a | not reached / not reached |" in row


def test_sampler_settings_are_named_in_the_method():
    import bench_search as b
    import optuna

    assert b.method_parts("tpe+asha:startup=6:ei=48:seed=100") == (
        "tpe+asha", {"min_startup": 6, "startup_share": 0.0, "n_ei_candidates": 48, "seed_offset": 100})
    assert b.method_parts("random+asha") == ("random+asha", {})
    for bad in ("tpe+asha:warp=2", "tpe+asha:startup", "random+asha:startup=2", "bayes"):
        with pytest.raises(SystemExit, match=f"^error: --methods {re.escape(bad)}"):
            b.method_parts(bad)
    sampler = b.method_sampler("tpe+asha:startup=6:ei=48", 0, 40)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == 6
    assert sampler._n_ei_candidates == 48
    assert b.method_sampler("tpe10+asha", 0, 40)._n_startup_trials == 10  # Optuna's default
    assert isinstance(b.method_sampler("random+asha", 0, 40), optuna.samplers.RandomSampler)
    assert b.asha_trials(160, 8, 2, 2) == 40  # 2 epochs each, half of them 2 more, a quarter 4 more: 4 per trial
    assert b.asha_trials(160, 2, 2, 2) == 80 and b.asha_trials(100, 30, 5, 3) == 10  # rungs 5, 15, 30: 5 + 10/3 + 15/9


@pytest.mark.slow
def test_smoke_runs_every_method_and_writes_table_plot_and_json(tmp_path):
    out = tmp_path / "search.json"
    methods = ("random", "random+asha", "tpe+asha", "tpe+asha-old", "tpe+asha-warm")
    done = subprocess.run([sys.executable, str(BENCH / "bench_search.py"), "--smoke", "--json", str(out), "--methods",
                           ",".join(methods)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = done.stdout[done.stdout.index("== search efficiency =="):]
    for method in methods:
        assert f"| {method} | 1 |" in report, report
    assert "reaches random search's final best validation H" in report and "the target of <= 40%" in report
    assert "reaches random+asha's final best validation H" in report and "the target of <= 60%" in report
    assert "tpe+asha-warm (warm-started from a tpe+asha study on a second benchmark) reaches" in report
    saved = json.loads(out.read_text())
    assert {r["method"] for r in saved["runs"]} == set(methods)
    for run in saved["runs"]:
        assert len(run["curve"]) == 6 and 0 <= run["test"]["H"] <= 1
        assert {"alpha", "gamma"} <= set(run["best_params"])  # the refit's alpha and gamma are the chosen ones
    warm = next(r for r in saved["runs"] if r["method"] == "tpe+asha-warm")
    assert 0 < warm["source_best"] <= 1  # its source study ran, on the second benchmark
    assert out.with_suffix(".png").stat().st_size > 0
    assert len(out.with_suffix(".runs.jsonl").read_text().splitlines()) == len(methods)
