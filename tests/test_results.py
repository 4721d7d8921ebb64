"""A study's results (msdn/study/results.py) and what is printed and saved of them (msdn/study/report.py)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from msdn.metrics import HEADLINE_KEYS, SCORE_KEYS, SUMMARY_KEYS
from msdn.study.options import StudyOptions
from msdn.study.report import end_lines, format_table, summary_dict
from msdn.study.results import RefitResult, StudyResult, TrialSummary, best_trial, trial_state, trial_summaries
from msdn.study.search_space import METRICS, load_search_space

REPO = Path(__file__).resolve().parents[1]
NAN = float("nan")


@pytest.fixture(scope="module")
def space():
    return load_search_space(REPO / "search_spaces" / "synthetic.yaml", "synthetic")


def epoch(i: int, H: float, **extra) -> dict:
    return {"training_iteration": i, "S": 0.5, "U": 0.4, "H": H, "zsl_acc": 0.6, "H_best_gamma": H + 0.01,
            "best_gamma": 1.5, "loss": 1.0 / i, "trial_seed": 11, "curve_H": [0.1, 0.2], **extra}


def tune_result(trial_id: str, epochs: list[dict] | None, error: str | None = None, **config) -> SimpleNamespace:
    """What trial_summaries reads of a Tune `Result`."""
    df = pd.DataFrame(epochs) if epochs else pd.DataFrame()
    return SimpleNamespace(metrics={"trial_id": trial_id, **(epochs[-1] if epochs else {})}, config=config,
                           error=RuntimeError(error) if error else None, metrics_dataframe=df)


def trial(trial_id: str, H: float | None, state: str = "completed", **params) -> TrialSummary:
    best = None if H is None else epoch(2, H)
    return TrialSummary(trial_id, state, 3 if best else 0, params, best=best, best_epoch=2 if best else None)


@pytest.mark.parametrize("epochs, max_epochs, errored, expected", [
    (4, 4, False, "completed"), (6, 4, False, "completed"), (1, 4, False, "stopped_early"),
    (4, 4, True, "errored"), (0, 4, True, "errored"),
])
def test_trial_state_rule(epochs, max_epochs, errored, expected):
    assert trial_state(epochs, max_epochs, errored) == expected


def test_trial_summaries_pick_each_trials_best_epoch_and_state():
    grid = [
        tune_result("a", [epoch(1, 0.2), epoch(2, 0.5), epoch(3, 0.4)], lr=1e-3),
        tune_result("b", [epoch(1, 0.3)], lr=2e-3),
        tune_result("c", [epoch(1, 0.1), epoch(2, NAN)], error="training diverged", lr=1.0),
        tune_result("d", None, error="worker died", lr=5e-4),
        tune_result("e", None, lr=5e-4),
    ]
    a, b, c, d, e = trial_summaries(grid, "H", "max", max_epochs=3)
    assert (a.trial_id, a.state, a.epochs, a.best_epoch, a.best["H"], a.params) == ("a", "completed", 3, 2, 0.5,
                                                                                     {"lr": 1e-3})
    assert (b.state, b.epochs, b.best_epoch, b.error) == ("stopped_early", 1, 1, None)
    assert (c.state, c.best_epoch, c.error) == ("errored", 1, "training diverged")
    assert (d.state, d.epochs, d.best, d.best_epoch, d.error) == ("errored", 0, None, None, "worker died")
    assert (e.state, e.best) == ("no result", None)
    # mode min picks the lowest value of the metric
    (a_min, *_) = trial_summaries(grid[:1], "loss", "min", max_epochs=3)
    assert a_min.best_epoch == 3


def test_best_trial_by_mode_ignoring_nan_and_missing_results():
    trials = [trial("a", 0.4), trial("b", NAN), trial("c", 0.7), trial("d", None, state="errored"), trial("e", 0.1)]
    assert best_trial(trials, "H", "max").trial_id == "c"
    assert best_trial(trials, "H", "min").trial_id == "e"
    assert best_trial([trial("b", NAN), trial("d", None, state="errored")], "H", "max") is None
    assert best_trial([], "H", "max") is None
    assert best_trial([trial("a", 0.4), trial("a2", 0.4)], "H", "max").trial_id == "a"  # first of equals


def test_metric_names_are_defined_once_in_msdn_metrics():
    assert set(HEADLINE_KEYS) <= set(SCORE_KEYS) <= set(SUMMARY_KEYS)
    assert "gamma" in SUMMARY_KEYS and "gamma" not in SCORE_KEYS  # a setting, not a score to optimise
    assert {k for k, mode in METRICS.items() if mode == "max"} == set(SCORE_KEYS)


def test_format_table_ranks_the_top_trials_best_first(space):
    trials = [trial("a", 0.4, lr=1e-3, momentum=0.9), trial("b", None, state="errored"),
              trial("c", 0.7, state="stopped_early", lr=2.5e-4, momentum=0.0), trial("d", 0.1)]
    lines = format_table(trials, space, top=2).splitlines()
    header = lines[0].split()
    assert header[:3] == ["#", "state", "epochs"] and header[-5:] == ["S", "U", "H", "H@best-gamma", "best-gamma"]
    assert header[3:-5] == list(space.param_names)
    assert len(lines) == 3  # the header and the top 2; the errored trial has no row
    first = dict(zip(header, lines[1].split()))
    assert first == {**first, "#": "1", "state": "stopped_early", "epochs": "2/3", "lr": "0.00025", "momentum": "0",
                     "S": "50.00", "H": "70.00", "H@best-gamma": "71.00", "best-gamma": "1.50", "alpha": "None"}
    assert dict(zip(header, lines[2].split()))["state"] == "completed"
    assert len({len(line) for line in lines}) == 1  # right-aligned columns


def test_summary_and_end_lines(space, tmp_path):
    best = trial("c", 0.7, lr=2.5e-4)
    refit = RefitResult(metrics={k: 0.5 for k in SUMMARY_KEYS}, epochs=2, seed=11, train_time=1.5,
                        curve={"curve_gamma": [0.0, 1.0]})
    result = StudyResult("/r/msdn", "sqlite:///x.db", "1", "run", trials=[best, trial("d", None, state="errored")],
                         best=best, refit=refit)
    summary = json.loads(json.dumps(summary_dict(result)))
    assert summary["best"]["trial_id"] == "c" and summary["best"]["best_epoch"] == 2
    assert summary["best"]["metrics"]["H"] == 0.7 and "curve_H" not in summary["best"]["metrics"]
    assert summary["refit"] == {**{k: 0.5 for k in SUMMARY_KEYS}, "epochs": 2, "seed": 11, "train_time": 1.5}
    assert summary["trials"][1] == {"trial_id": "d", "params": {}, "error": None, "state": "errored", "epochs": 0,
                                    "metrics": {}}
    opts = StudyOptions(dataset="synthetic", search_space=space.path, experiment="msdn-synthetic-val")
    lines = end_lines(result, opts, space)
    assert lines[0] == "\n2 trials: 1 completed, 1 errored"
    assert lines[1].startswith("best trial c at epoch 2: H=0.7000")
    assert lines[2] == "TEST (refit on trainval, 2 epochs, gamma=0.50): S=0.5000 U=0.5000 H=0.5000 ZSL=0.5000"
    assert lines[-1].startswith("MLflow:  mlflow ui --backend-store-uri sqlite:///x.db")


def test_a_study_that_failed_at_start_leaves_nothing_that_blocks_a_retry(tmp_path):
    from msdn.study.options import StudyOptions, experiment_path
    from msdn.study.runner import remove_unstarted_experiment

    opts = StudyOptions(dataset="synthetic", search_space=Path("x.yaml"), storage_path=str(tmp_path),
                        experiment="exp")
    folder = Path(experiment_path(opts))
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"state of a Tuner that never ran a trial")
    assert remove_unstarted_experiment(opts) and not folder.exists()

    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"x")
    (folder / "train_msdn_0001").mkdir()  # a trial started: its checkpoints may be worth resuming
    assert not remove_unstarted_experiment(opts) and (folder / "tuner.pkl").is_file()
    uri_opts = StudyOptions(dataset="synthetic", search_space=Path("x.yaml"), storage_path="s3://bucket/p",
                            experiment="exp")
    assert not remove_unstarted_experiment(uri_opts)  # object storage is never deleted from
