"""Several benchmarks in one run (`tune/run.py --dataset synthetic cub`): input checked for all before the
first study, one study each as if alone, the next study's trials while the previous one refits, one table;
`--resume` after a Ctrl+C in the second study runs only the second.

The `cub` benchmark here is the synthetic one written in the CUB layout (the files under CUB names): the
real CUB metadata would do, but its 2 GB of features would not.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msdn.study.options import StudyError, StudyRequest, study_requests

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
CUB_NAMES = {"xlsa17/data/SYNTHETIC/att_splits.mat": "xlsa17/data/CUB/att_splits.mat",
             "xlsa17/data/SYNTHETIC/res101.mat": "xlsa17/data/CUB/res101.mat",
             "w2v/SYNTHETIC_attribute.pkl": "w2v/CUB_attribute.pkl",
             "SYNTHETIC/feature_map_ResNet_101_SYNTHETIC.hdf5": "CUB/feature_map_ResNet_101_CUB.hdf5"}


def test_one_request_per_benchmark_and_the_flags_that_name_one_study_are_refused():
    base = StudyRequest(dataset="synthetic", num_samples=3)
    assert [r.dataset for r in study_requests(base, ["synthetic", "cub"])] == ["synthetic", "cub"]
    assert all(r.num_samples == 3 for r in study_requests(base, ["synthetic", "cub"]))
    with pytest.raises(StudyError, match="cub given twice"):
        study_requests(base, ["cub", "synthetic", "cub"])
    for flag, value in (("experiment", "mine"), ("search_space", Path("x.yaml"))):
        with pytest.raises(StudyError, match=f"--{flag.replace('_', '-')} names one study's files"):
            study_requests(dataclasses.replace(base, **{flag: value}), ["synthetic", "cub"])
    assert study_requests(dataclasses.replace(base, experiment="mine"), ["cub"])[0].experiment == "mine"
    with pytest.raises(StudyError, match="--transfer warm-starts each study from the one before"):
        study_requests(dataclasses.replace(base, transfer=True), ["cub"])


@pytest.fixture
def two_benchmarks(tmp_path, synthetic_root) -> Path:
    """A data root with the synthetic benchmark, and the same files in the CUB layout."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    for ours, cub in CUB_NAMES.items():
        (root / cub).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / ours, root / cub)
    return root


def parent_runs(db: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], "tags.`msdn.study` = 'parent'") if exp else []


@pytest.mark.slow
def test_two_benchmarks_in_one_run_resume_after_ctrl_c_in_the_second(tmp_path, two_benchmarks):
    common = ["--data-root", str(two_benchmarks), "--num-samples", "3", "--max-epochs", "5", "--max-concurrent", "1",
              "--refit-seeds", "1", "--no-baseline", "--transfer"]
    results = tmp_path / "results"

    # bad input for the second benchmark: refused before the first one starts
    bad = subprocess.run(RUN + ["--dataset", "synthetic", "sun", *common], cwd=tmp_path, capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "SUN" in bad.stderr and "msdn.prepare" in bad.stderr
    assert not results.exists() and not (tmp_path / "mlflow.db").exists()

    # the run, stopped by Ctrl+C while the second study's trials run (the first has ended, refit included)
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(RUN + ["--dataset", "synthetic", "cub", *common], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    first_summary = results / "msdn-synthetic-val" / "study_summary.json"
    deadline = time.monotonic() + 600
    while not (first_summary.is_file() and "==== study 2 of 2" in log.read_text()):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    assert "trials: 3 of 3 ended" not in log.read_text().split("==== study 2 of 2")[1]  # cub's trials still run
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    assert json.loads(first_summary.read_text())["state"] == "completed"
    assert json.loads((results / "msdn-cub-val" / "study_summary.json").read_text())["state"] == "interrupted"
    assert not list(results.glob("table-*"))  # no table for a stopped run

    # --resume: the finished study is not run again, the second is continued and the table written
    done = subprocess.run(RUN + ["--dataset", "synthetic", "cub", *common, "--resume"], cwd=tmp_path,
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "msdn-synthetic-val (finished: not run again)" in done.stdout
    assert "==== study 1 of 2" not in done.stdout and "==== study 2 of 2: msdn-cub-val" in done.stdout
    db = tmp_path / "mlflow.db"
    from mlflow.tracking import MlflowClient

    for experiment in ("msdn-synthetic-val", "msdn-cub-val"):
        (run,) = parent_runs(db, experiment)  # one parent run each: the resumed study kept its own
        assert run.info.status == "FINISHED" and "test_H" in run.data.metrics
    logged = {a.path for a in MlflowClient(f"sqlite:///{db}").list_artifacts(run.info.run_id, "paper_table")}
    assert logged == {f"paper_table/table-synthetic-cub.{fmt}" for fmt in ("md", "tex", "csv", "png")}
    # --transfer: the second study's search began with the first study's best configurations, marked as such
    from msdn.study.searcher import load_optuna_study

    cub = load_optuna_study(results / "msdn-cub-val" / "optuna_study.journal", "msdn-cub-val")
    assert cub.trials[0].user_attrs["warm_start_from"] == str(results / "msdn-synthetic-val")
    tables = {fmt: (results / f"table-synthetic-cub.{fmt}").read_text() for fmt in ("md", "tex", "csv")}
    assert "| SYNTHETIC | tuned (1 seed)" in tables["md"] and "| CUB | tuned (1 seed)" in tables["md"]
    assert "| CUB | published (selected on test) | 67.5 | 68.7 | 68.1 | 76.1" in tables["md"]
    assert r"\toprule" in tables["tex"] and "CUB & tuned" in tables["tex"].replace("\\midrule\n", "")
    assert tables["csv"].splitlines()[0].startswith("benchmark,experiment,configuration")
    assert (results / "table-synthetic-cub.png").read_bytes()[:4] == b"\x89PNG"
