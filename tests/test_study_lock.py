"""A second start of a running study, as it happens: a real study runs (tune/run.py in a subprocess), the same
command is started again while it runs, with and without --resume. Each second start ends with exit 2 in
seconds, naming the running study's pid, having written nothing (MLflow holds one parent run, the log file no
second start); the first study then finishes unharmed. The lock's logic, in-process: tests/test_started.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msdn.fsutil import lock_holder

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
ENV = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1"}
EXPERIMENT = "msdn-synthetic-val"


def parents_and_trials(db: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=100)
    return ([r for r in runs if r.data.tags.get("msdn.study") == "parent"],
            [r for r in runs if r.data.tags.get("msdn.study") == "trial"])


@pytest.mark.slow
def test_a_second_start_of_a_running_study_is_refused_at_once_and_the_first_is_unharmed(tmp_path, synthetic_root):
    # One trial at a time, so that the study outlasts the second starts (each imports torch and Ray first).
    args = RUN + ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--num-samples", "8", "--max-epochs",
                  "6", "--max-concurrent", "1", "--refit-seeds", "1", "--no-baseline"]
    folder = tmp_path / "results" / EXPERIMENT
    output = open(tmp_path / "first.out", "w")
    first = subprocess.Popen(args, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, env=ENV,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "parent run" not in (tmp_path / "first.out").read_text():  # MLflow and Ray are up, the trials next
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.out").read_text()[-3000:]
            time.sleep(0.5)
        assert lock_holder(folder / "study.lock").startswith(f"pid {first.pid} on host ")
        start = time.monotonic()  # the same command again; and the --resume a user might try; at once
        seconds = [subprocess.Popen(args + extra, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=ENV) for extra in ([], ["--resume"])]
        for second in seconds:
            out, err = second.communicate(timeout=120)
            assert second.returncode == 2, out[-2000:] + err[-2000:]
            assert time.monotonic() - start < 60 and "Traceback" not in err
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and errors[0].startswith(f"error: the study {EXPERIMENT!r} ({folder}) is running "
                                                             f"now (pid {first.pid} on host ")
            assert "nothing was written" in errors[0] and "Started a local Ray" not in out + err
            assert f"(pid {second.pid})" not in (folder / "study.log").read_text()  # it never opened the log
        parents, _ = parents_and_trials(tmp_path / "mlflow.db")
        assert len(parents) == 1 and parents[0].info.status == "RUNNING"
        assert first.poll() is None  # it ran all along: the refusals were the lock's
        assert first.wait(timeout=900) == 0, (tmp_path / "first.out").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, 9)
        output.close()
    parents, trials = parents_and_trials(tmp_path / "mlflow.db")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(trials) == 8
    assert lock_holder(folder / "study.lock") is None  # released with the study
    assert "TEST (refit on trainval" in (tmp_path / "first.out").read_text()
