"""What a study shows a person (msdn/study/console.py, the report's width) and where its log lines go
(msdn/study/logs.py): the progress counts and words as pure functions, the plain printer, the log routing,
and (slow) a whole study's console output with -v. The default console of a whole study is checked on
tests/test_study.py's small study (tests/console_checks.py), so that no extra study runs for it.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from msdn.study.console import (WIDTH, Best, PlainDisplay, Snapshot, TrialCounter, duration, eta_seconds,
                                live_view, snapshot_of, status_line, trial_end_line)

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
CONTROL = re.compile(r"\x1b|\r")  # a redraw: escape sequences, carriage returns


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- counting and words -----------------------------------------------------------------------------------------
def test_snapshot_counts_ended_trials_by_their_epochs_and_lowers_the_bound_by_what_they_did_not_use():
    snap = snapshot_of([("TERMINATED", 3), ("TERMINATED", 1), ("ERROR", 2), ("RUNNING", 2), ("PENDING", 0)],
                       total=8, max_epochs=3)
    assert (snap.completed, snap.stopped, snap.errored, snap.running, snap.ended) == (1, 1, 1, 1, 3)
    assert snap.epochs == 8
    # 8 trials x 3 epochs, less the 2 the early-stopped trial and the 1 the errored trial did not train
    assert snap.bound == 24 - 3


def test_eta_is_the_remaining_bound_at_this_runs_pace():
    snap = Snapshot(total=4, max_epochs=3, epochs=6, completed=2)  # bound 12, 6 left
    assert eta_seconds(snap, epochs_before=0, elapsed=60.0) == pytest.approx(60.0)
    # a resumed study: only the 2 epochs trained in this run count for the pace
    assert eta_seconds(snap, epochs_before=4, elapsed=60.0) == pytest.approx(180.0)
    assert eta_seconds(Snapshot(total=4, max_epochs=3), 0, 60.0) is None  # no epoch yet: no pace


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (44.6, "45s"), (245, "4m05s"), (7380, "2h03m"), (None, "?")])
def test_durations_in_words(seconds, text):
    assert duration(seconds) == text


def test_status_line_fits_the_width_and_drops_details_before_the_essentials():
    snap = Snapshot(total=4, max_epochs=3, completed=1, stopped=1, running=2, epochs=7, unused=2,
                    best=Best(0.3527, "1bc56d21"))
    line = status_line(snap, "H_grid", elapsed=65, eta=30)
    assert line.startswith("[1m05s] trials 2/4 ended, 2 running") and "trial-epochs 7/≤10, ETA ≤ 30s" in line
    assert "best H_grid 0.3527 (1bc56d21)" in line and len(line) <= WIDTH
    huge = Snapshot(total=1200, max_epochs=300, completed=400, stopped=500, errored=100, running=120,
                    epochs=123456, best=Best(0.123456, "abcdef12_00001"))
    line = status_line(huge, "zsl_acc", elapsed=99999, eta=99999)
    assert len(line) <= WIDTH and "1000/1200 ended, 120 running" in line and "ETA ≤" in line


def test_trial_end_line():
    assert trial_end_line("1bc56d21", "stopped_early", 2, 3, "H_grid", 0.13526) == \
        "trial 1bc56d21  stopped early  2/3 epochs  H_grid 0.1353"
    assert trial_end_line("a", "completed", 3, 3, "H", 0.5, new_best=True).endswith("H 0.5000  (best so far)")
    # with Tune's trial number, the line begins as the trial's MLflow run name does
    assert trial_end_line("1bc56d21", "completed", 3, 3, "H", 0.5, number=7).startswith("t07 1bc56d21  completed  ")
    errored = trial_end_line("c", "errored", 1, 3, "H", None, error="RuntimeError: " + "training diverged " * 20)
    assert errored.startswith("trial c  errored        1/3 epochs  H -  RuntimeError: training diverged")
    assert len(errored) == WIDTH and errored.endswith("…")


def test_live_view_fits_the_width():
    from rich.console import Console

    snap = Snapshot(total=120, max_epochs=300, completed=40, stopped=50, errored=10, running=8, epochs=12345,
                    best=Best(0.35270141, "1bc56d21", (("lambda_dis", 0.000138699), ("lambda_cal", 0.0149368),
                                                      ("lr_v_factor_with_a_long_name", 2.04052))))
    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(live_view(snap, "H_grid", 3600.0, 7200.0))
    lines = console.export_text().splitlines()
    assert len(lines) == 3 and max(len(line.rstrip()) for line in lines) <= WIDTH
    assert "100/120 ended: 40 completed, 50 stopped early, 10 errored; 8 running" in lines[0]
    assert "12345/≤" in lines[1] and "ETA ≤ 2h00m" in lines[1]
    assert lines[2].startswith("best   H_grid 0.3527, trial 1bc56d21: lambda_dis=0.000139 lambda_cal=0.0149")


# -- the plain printer and the Tune callback --------------------------------------------------------------------
def fake_trial(trial_id: str, status: str = "RUNNING", epochs: int = 0, **config) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, config=config, error_file=None,
                           last_result={"training_iteration": epochs} if epochs else {})


def test_plain_display_prints_a_status_line_per_interval_and_every_trial_end(tmp_path):
    lines, clock = [], Clock()
    counter = TrialCounter(PlainDisplay(lines.append, "H", interval=30.0, clock=clock), total=3, max_epochs=3,
                           metric="H", mode="max", key_params=("lr", "momentum"), clock=clock)
    a, b = fake_trial("a", lr=1e-3, momentum=0.9), fake_trial("b", lr=2e-3, momentum=0.0)
    with counter:
        trials = [a, b]
        for epoch in (1, 2):
            clock.now += 10
            for trial, value in ((a, 0.2 * epoch), (b, 0.25 * epoch)):
                trial.last_result = {"training_iteration": epoch}
                counter.on_trial_result(epoch, trials, trial, {"H": value, "training_iteration": epoch})
            counter.on_step_end(epoch, trials)
        counter.on_trial_complete(3, trials, b)  # ASHA stops b after 2 epochs; Tune marks it TERMINATED later
        clock.now += 15  # 35 s after the start: a status line is due; the pace: 2 epochs in the 25 s since the first
        # count, 4 epochs left to the bound (3 trials x 3 epochs, less the one b did not train): 50 s
        counter.on_step_end(3, trials)
        error = tmp_path / "error.txt"
        error.write_text("Failure # 1\nTraceback (most recent call last):\n  File x\nRuntimeError: diverged\n\n")
        a.error_file = str(error)
        counter.on_trial_error(4, trials, a)
    assert lines[0] == "trial b  stopped early  2/3 epochs  H 0.5000  (best so far)"
    assert lines[1] == "[35s] trials 1/3 ended, 1 running; trial-epochs 4/≤8, ETA ≤ 50s; best H 0.5000 (b)"
    assert lines[2] == "trial a  errored        2/3 epochs  H 0.4000  RuntimeError: diverged"
    assert lines[3] == "trials: 2 of 3 ended in 35s (0 completed, 1 stopped early, 1 errored), 4 trial-epochs"
    assert len(lines) == 4 and not any(CONTROL.search(line) for line in lines)
    assert counter.snapshot.best == Best(0.5, "b", (("lr", 2e-3), ("momentum", 0.0)))


def test_trials_stopped_by_an_interruption_do_not_count_as_ended():
    lines, stop = [], SimpleNamespace(requested=False)
    counter = TrialCounter(PlainDisplay(lines.append, "H", interval=None), total=4, max_epochs=3, metric="H",
                           mode="max", stop=stop)
    a, b = fake_trial("a", "RUNNING", 1), fake_trial("b", "RUNNING", 2)
    with counter:
        counter.on_step_end(1, [a, b])
        counter.on_trial_complete(2, [a, b], b)  # ASHA stopped b
        stop.requested = True  # Ctrl+C: Tune stops a and marks both TERMINATED
        a.status = b.status = "TERMINATED"
        counter.on_experiment_end([a, b])
    assert lines == ["trial b  stopped early  2/3 epochs  H -",
                     "trials: 1 of 4 ended in 0s (0 completed, 1 stopped early, 0 errored), 3 trial-epochs"]
    assert counter.ends.states == {"b": "stopped_early"}  # a had not ended: the outcome says interrupted


def test_a_trial_that_errors_after_a_stop_request_shows_as_interrupted_as_in_mlflow(tmp_path):
    """One rule (results.trial_state through a shared TrialEnds): the console line says what the MLflow run's tag
    says (tests/test_tracking.py), and the error stays on the line."""
    from msdn.study.results import TrialEnds

    lines, stop = [], SimpleNamespace(requested=False)
    ends = TrialEnds(3, stop)
    counter = TrialCounter(PlainDisplay(lines.append, "H", interval=None), total=2, max_epochs=3, metric="H",
                           mode="max", stop=stop, ends=ends)
    a = fake_trial("a", "RUNNING", 1)
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\nRayActorError: the actor died\n")
    a.error_file = str(error)
    with counter:
        stop.requested = True
        counter.on_trial_error(2, [a], a)
    assert lines[0] == "trial a  interrupted    1/3 epochs  H -  RayActorError: the actor died"
    assert ends.states == {"a": "interrupted"}


def test_a_resumed_studys_trials_count_with_their_recorded_best():
    lines = []
    done = fake_trial("old", "TERMINATED", 3, lr=1e-3)
    done.metric_analysis = {"H": {"max": 0.6, "min": 0.1}}
    counter = TrialCounter(PlainDisplay(lines.append, "H", interval=None), total=2, max_epochs=3, metric="H",
                           mode="max", key_params=("lr",))
    with counter:
        counter.on_step_end(0, [done, fake_trial("new", "PENDING")])
    assert counter.snapshot.best == Best(0.6, "old", (("lr", 1e-3),))
    assert (counter.snapshot.completed, counter.snapshot.bound, counter.eta()) == (1, 6, None)
    assert lines == ["trials: 1 of 2 ended in 0s (1 completed, 0 stopped early, 0 errored), 3 trial-epochs"]
    assert counter.ends.states == {"old": "completed"}  # it ended in the run before: a stop now does not cut it


# -- the report at the console's width --------------------------------------------------------------------------
def test_the_top_trials_table_splits_into_metrics_and_parameters_when_too_wide():
    from msdn.study.report import format_table
    from msdn.study.results import TrialSummary
    from msdn.study.search_space import load_search_space

    space = load_search_space(REPO / "search_spaces" / "synthetic.yaml", "synthetic")
    assert space.metric == "H_grid"
    best = {"S": 0.5, "U": 0.4, "H": 0.44, "H_grid": 0.47, "grid_alpha": 0.9, "grid_gamma": 1.5}
    params = {"lambda_dis": 1.3869e-4, "lambda_cal": 0.0149, "lr": 2.09e-4, "lr_v_factor": 2.04,
              "weight_decay": 3.6e-4, "momentum": 0.9}
    trials = [TrialSummary(f"t{i}", "stopped_early", 2, params, best={**best, "H_grid": 0.4 + i / 100}, best_epoch=2)
              for i in range(3)]
    wide = format_table(trials, space).splitlines()
    assert len(wide[0]) > WIDTH and "H@grid" in wide[0].split()  # the ranking metric is a column
    metrics, params_table = format_table(trials, space, width=WIDTH).split("\n\n")
    assert metrics.splitlines()[0].split() == ["#", "state", "epochs", "H@grid", "S", "U", "H", "grid-alpha",
                                               "grid-gamma"]
    assert metrics.splitlines()[1].split()[:4] == ["1", "stopped_early", "2/2", "42.00"]  # best first
    assert params_table.splitlines()[0].split() == ["#", *space.param_names]
    assert max(len(line) for line in metrics.splitlines() + params_table.splitlines()) <= WIDTH


def test_header_lines_fit_the_width_except_paths(tmp_path):
    from msdn.study.options import StudyRequest, with_defaults
    from msdn.study.report import start_lines, study_header
    from msdn.study.search_space import load_search_space

    space = load_search_space(REPO / "search_spaces" / "synthetic.yaml", "synthetic")
    opts = with_defaults(StudyRequest(dataset="synthetic", search_space=space.path, storage_path=str(tmp_path),
                                      max_epochs=30, mlflow_uri="http://127.0.0.1:5000"), space.asha.max_t)
    lines = study_header(opts, space, str(tmp_path / "study.log")) + start_lines(opts, {"cpu": 1.0, "gpu": 0.5}, 2,
                                                                                    "1", "f" * 32)
    assert all(len(line) <= WIDTH for line in lines if str(REPO) not in line and str(tmp_path) not in line)
    assert lines[-6:-4] == [f"log:     {tmp_path / 'study.log'}",
                            "         (Ray, Tune, MLflow and Optuna lines; -v shows them here too)"]
    assert lines[-2] == "trials:  12, each at most 30 epochs (ASHA stops some early: ≤360 trial-epochs)"
    assert lines[-1] == "         2 at a time, each on 1 CPU and 0.5 GPU"


# -- the log file -----------------------------------------------------------------------------------------------
def test_library_log_lines_go_to_the_file_and_not_the_console(tmp_path, capsys):
    from msdn.study.logs import StudyLog

    ray_logger = logging.getLogger("ray")
    before = list(ray_logger.handlers), ray_logger.propagate
    with StudyLog(verbose=False) as log:
        show = log.echo(print)
        logging.getLogger("ray.tune.tune").info("before the file is named")
        log.open(tmp_path / "exp" / "study.log")
        logging.getLogger("optuna.study").warning("a new study")  # warning: other tests lower Optuna's level
        logging.getLogger("mlflow.store.db.utils").info("creating tables")
        show("a line for the person")
    text = (tmp_path / "exp" / "study.log").read_text()
    assert text.index("before the file is named") < text.index("a new study") < text.index("creating tables")
    assert "msdn.study.console: a line for the person" in text
    out, err = capsys.readouterr()
    assert out == "a line for the person\n" and err == ""
    assert (list(ray_logger.handlers), ray_logger.propagate) == before  # restored


def test_verbose_shows_library_log_lines_on_stderr_too(tmp_path, capsys):
    from msdn.study.logs import StudyLog

    with StudyLog(verbose=True) as log:
        log.open(tmp_path / "study.log")
        logging.getLogger("ray.tune.tune").info("Total run time: 1 s")
    assert "INFO ray.tune.tune: Total run time: 1 s" in capsys.readouterr().err
    assert "Total run time: 1 s" in (tmp_path / "study.log").read_text()


def test_a_study_that_failed_at_start_keeps_its_log(tmp_path):
    from msdn.study.conclude import remove_unstarted_experiment
    from msdn.study.options import StudyRequest, with_defaults

    opts = with_defaults(StudyRequest(dataset="synthetic", storage_path=str(tmp_path), experiment="e"), 4)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "tuner.pkl").write_bytes(b"x")
    (tmp_path / "e" / "study.log").write_text("why it failed\n")
    assert remove_unstarted_experiment(opts)
    assert [p.name for p in (tmp_path / "e").iterdir()] == ["study.log"]


# -- a whole study ----------------------------------------------------------------------------------------------
@pytest.fixture
def ray_tmpdir():
    """A fresh, short RAY_TMPDIR (Ray's socket paths below it must stay under the OS length limit)."""
    path = Path(tempfile.mkdtemp(prefix="msdn-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_study(workdir: Path, ray_tmpdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(ray_tmpdir)}
    return subprocess.run(RUN + list(args), cwd=workdir, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_verbose_shows_tunes_table_and_the_libraries_lines(tmp_path, synthetic_root, ray_tmpdir):
    out = run_study(tmp_path, ray_tmpdir, "--dataset", "synthetic", "--data-root", str(synthetic_root),
                    "--num-samples", "2", "--max-epochs", "2", "--no-refit", "-v")
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-4000:]
    for needle in ("== Status ==", "Trial name", "Started a local Ray instance", "Checkpoint successfully created",
                   "INFO ray.tune.tune: Total run time"):
        assert needle in console, needle
    assert "== Status ==" in (tmp_path / "results" / "msdn-synthetic-val" / "study.log").read_text()
