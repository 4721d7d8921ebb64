"""benchmarks/bench_study.py: its arithmetic on hand-made results, and --smoke end to end (fields, never timings)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def _row(epoch: int, train: float, evaluate: float, **extra) -> dict:
    return {"training_iteration": epoch, "train_time": train, "eval_time": evaluate, **extra}


def _trials():
    from msdn.study import timing as t

    fresh = {t.WORKER_TRIAL: 1, t.TIME_WORKER_START: 3.0, t.TIME_WORKER_IDLE: 0.0, t.TIME_DATA_OPEN: 0.5,
             t.TIME_TRAINER_BUILD: 1.0, t.TIME_TO_DRIVER: 0.01}
    reused = {t.WORKER_TRIAL: 2, t.TIME_WORKER_START: 0.0, t.TIME_WORKER_IDLE: 0.1, t.TIME_DATA_OPEN: 0.001,
              t.TIME_TRAINER_BUILD: 0.002, t.TIME_TO_DRIVER: 0.01}
    later = {t.TIME_CHECKPOINT: 0.01, t.TIME_REPORT: 0.03, t.TIME_TO_DRIVER: 0.01}
    return [
        # a fresh worker's trial: its first epoch 0.4 s slower than the steady 1.0 s
        [_row(1, 1.1, 0.3, **fresh), _row(2, 0.8, 0.2, **later), _row(3, 0.8, 0.2, **later, time_total_s=8.0)],
        # the same worker's next trial
        [_row(1, 0.8, 0.2, **reused), _row(2, 0.8, 0.2, **later, time_total_s=2.1)],
    ]


def test_analysis_of_hand_made_results():
    import bench_study

    run = bench_study.StudyRun(opts=None, space=None, wall_s=20.0, driver_cpu_s=5.0, loop_s=10.0,
                                   trials=_trials())
    f = bench_study.analyse(run, slots=1)
    assert f["trial_epochs"] == 5 and f["train_eval_s"] == pytest.approx(5.4)
    assert f["utilisation"] == pytest.approx(0.54)
    assert f["steady_epoch_s"] == pytest.approx(1.0)
    assert (f["fresh_workers"], f["reused_worker_trials"]) == (1, 1)
    assert f["first_epoch_extra_fresh_s"] == pytest.approx(0.4) and f["first_epoch_extra_reused_s"] == pytest.approx(0)
    assert f["overhead_fresh_trial_s"] == pytest.approx(3.0 + 0.5 + 1.0 + 0.4)
    assert f["overhead_reused_trial_s"] == pytest.approx(0.1 + 0.001 + 0.002)
    assert f["utilisation_after_start"] == pytest.approx(5.4 / (10.0 - 4.9))
    assert f["report_checkpoint_share"] == pytest.approx(0.04)
    assert f["slot_s_in_trials"] == pytest.approx(10.1)


FIELDS = ["tuning loop wall (s)", "whole study wall (s)", "sum of train + eval (s)", "utilisation",
          "worker start / hand-over", "data open + validate", "trainer build", "first epoch's extra cost",
          "total per trial", "checkpoint write", "report (blocked in tune.report)", "result -> driver",
          "report + checkpoint / epoch", "tuning loop / baseline", "whole study / baseline"]


@pytest.mark.slow
def test_smoke_prints_every_field(tmp_path):
    command = [sys.executable, str(BENCH / "bench_study.py"), "--smoke", "--json", str(tmp_path / "f.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = done.stdout[done.stdout.index("== study throughput =="):].splitlines()
    values = {}
    for line in report:
        name, _, value = line.strip().partition(":")
        values[name] = value.strip()
    for field in FIELDS:
        assert field in values, f"{field!r} missing from:\n" + "\n".join(report)
    assert 0 < float(values["utilisation"]) <= 1
    fresh, reused = (int(x) for x in values["trials"].split("/"))
    assert fresh >= 1 and fresh + reused == 2  # --smoke runs 2 trials
    assert re.fullmatch(r"[\d.]+ / (n/a|[\d.]+)", values["worker start / hand-over"])
    assert float(values["tuning loop / baseline"].split()[0]) > 0
    assert any(line.startswith("baseline, one process, no Ray") for line in report)
    assert (tmp_path / "f.json").is_file()
