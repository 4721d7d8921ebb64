"""A study's results (msdn/study/results.py), its outcome (outcome.py) and what is printed and saved of them
(msdn/study/report.py)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from msdn.metrics import HEADLINE_KEYS, SCORE_KEYS, SUMMARY_KEYS
from msdn.study.options import StudyRequest, with_defaults
from msdn.study.outcome import StudyOutcome
from msdn.study.report import end_lines, format_table, refit_lines, summary_dict
from msdn.study.results import (BASELINE, TUNED, RefitResult, Refits, TrialEnds, TrialRecord, TrialSummary,
                                best_trial, trial_records, trial_state, trial_summaries)
from msdn.study.search_space import METRICS, load_search_space

REPO = Path(__file__).resolve().parents[1]
NAN = float("nan")


@pytest.fixture(scope="module")
def space():
    """The shipped synthetic space, optimising H (the epochs below have no settings grid)."""
    return dataclasses.replace(load_search_space(REPO / "search_spaces" / "synthetic.yaml", "synthetic"), metric="H")


def epoch(i: int, H: float, **extra) -> dict:
    return {"training_iteration": i, "S": 0.5, "U": 0.4, "H": H, "zsl_acc": 0.6, "loss": 1.0 / i, "trial_seed": 11,
            "curve_H": [0.1, 0.2], **extra}


def tune_result(trial_id: str, epochs: list[dict] | None, error: str | None = None, **config) -> SimpleNamespace:
    """What trial_summaries reads of a Tune `Result`."""
    df = pd.DataFrame(epochs) if epochs else pd.DataFrame()
    return SimpleNamespace(metrics={"trial_id": trial_id, **(epochs[-1] if epochs else {})}, config=config,
                           error=RuntimeError(error) if error else None, metrics_dataframe=df)


def trial(trial_id: str, H: float | None, state: str = "completed", **params) -> TrialSummary:
    best = None if H is None else epoch(2, H)
    return TrialSummary(trial_id, state, 3 if best else 0, params, best=best, best_epoch=2 if best else None)


@pytest.mark.parametrize("epochs, max_epochs, errored, stopping, expected", [
    (4, 4, False, False, "completed"), (6, 4, False, False, "completed"), (1, 4, False, False, "stopped_early"),
    (4, 4, True, False, "errored"), (0, 4, True, False, "errored"), (0, 4, False, False, "no result"),
    # ended after a stop request: cut short (errored meanwhile or not), unless it had trained every epoch
    (1, 4, False, True, "interrupted"), (0, 4, False, True, "interrupted"), (1, 4, True, True, "interrupted"),
    (4, 4, True, True, "interrupted"), (4, 4, False, True, "completed"),
])
def test_trial_state_rule(epochs, max_epochs, errored, stopping, expected):
    assert trial_state(epochs, max_epochs, errored, stopping) == expected


class Stop:
    """What TrialEnds reads of msdn.study.interrupt.StopRequests."""

    requested = False


def test_each_trial_ends_once_in_the_state_its_first_end_decides():
    stop = Stop()
    ends = TrialEnds(max_epochs=4, stop=stop)
    assert ends.decide("a", 2, errored=False) == "stopped_early"
    stop.requested = True  # Ctrl+C: what ends now was cut short, an error included
    assert ends.decide("b", 1, errored=True) == "interrupted" and ends.decide("c", 4, errored=False) == "completed"
    assert ends.decide("a", 3, errored=True) == "stopped_early"  # a second hook on the same end changes nothing
    assert ends.states == {"a": "stopped_early", "b": "interrupted", "c": "completed"}


def test_trial_summaries_pick_each_trials_best_epoch_and_state():
    grid = [
        tune_result("a", [epoch(1, 0.2), epoch(2, 0.5), epoch(3, 0.4)], lr=1e-3),
        tune_result("b", [epoch(1, 0.3)], lr=2e-3),
        tune_result("c", [epoch(1, 0.1), epoch(2, NAN)], error="training diverged", lr=1.0),
        tune_result("d", None, error="worker died", lr=5e-4),
        tune_result("e", None, lr=5e-4),
    ]
    records = trial_records(grid)
    assert [r.trial_id for r in records] == list("abcde") and records[3].error == "worker died"
    assert records[0].epochs == 3 and records[3].epochs == 0 and records[0].config == {"lr": 1e-3}
    assert TrialRecord.from_json(json.loads(json.dumps(records[0].to_json()))) == records[0]
    a, b, c, d, e = trial_summaries(records, "H", "max", max_epochs=3)
    assert (a.trial_id, a.state, a.epochs, a.best_epoch, a.best["H"], a.params) == ("a", "completed", 3, 2, 0.5,
                                                                                     {"lr": 1e-3})
    assert (b.state, b.epochs, b.best_epoch, b.error) == ("stopped_early", 1, 1, None)
    assert (c.state, c.best_epoch, c.error) == ("errored", 1, "training diverged")
    assert (d.state, d.epochs, d.best, d.best_epoch, d.error) == ("errored", 0, None, None, "worker died")
    assert (e.state, e.best) == ("no result", None)
    # mode min picks the lowest value of the metric
    (a_min, *_) = trial_summaries(records[:1], "loss", "min", max_epochs=3)
    assert a_min.best_epoch == 3
    # a stopped study: the state each trial got as it ended, else cut short (b had not ended when the stop came)
    states = [t.state for t in trial_summaries(records, "H", "max", 3, ended={"a": "completed"}, stopping=True)]
    assert states == ["completed", "interrupted", "interrupted", "interrupted", "interrupted"]


def test_a_trial_that_reported_is_named_by_its_experiment_tag():
    result = tune_result("a", [epoch(1, 0.2)], lr=1e-3)
    result.metrics["experiment_tag"] = "7_lr=0.0010"  # Tune adds it to every result it keeps
    assert trial_records([result])[0].experiment_tag == "7_lr=0.0010"
    assert trial_records([tune_result("b", None)])[0].experiment_tag is None


def test_best_trial_by_mode_ignoring_nan_and_missing_results():
    trials = [trial("a", 0.4), trial("b", NAN), trial("c", 0.7), trial("d", None, state="errored"), trial("e", 0.1)]
    assert best_trial(trials, "H", "max").trial_id == "c"
    assert best_trial(trials, "H", "min").trial_id == "e"
    assert best_trial([trial("b", NAN), trial("d", None, state="errored")], "H", "max") is None
    assert best_trial([], "H", "max") is None
    assert best_trial([trial("a", 0.4), trial("a2", 0.4)], "H", "max").trial_id == "a"  # first of equals


def test_metric_names_are_defined_once_in_msdn_metrics():
    assert set(SCORE_KEYS) <= set(SUMMARY_KEYS) and set(HEADLINE_KEYS) <= set(SUMMARY_KEYS)
    assert not [k for k in SUMMARY_KEYS if "best" in k]  # one way to choose the settings: the grid (GRID_KEYS)
    assert "gamma" in SUMMARY_KEYS and "gamma" not in SCORE_KEYS  # a setting, not a score to optimise
    assert {k for k, mode in METRICS.items() if mode == "max"} == set(SCORE_KEYS)


def test_format_table_ranks_the_top_trials_best_first(space):
    trials = [trial("a", 0.4, lr=1e-3, momentum=0.9), trial("b", None, state="errored"),
              trial("c", 0.7, state="stopped_early", lr=2.5e-4, momentum=0.0), trial("d", 0.1)]
    trials = [t if t.best is None else dataclasses.replace(t, best={**t.best, "grid_alpha": 0.9, "grid_gamma": 1.5})
              for t in trials]  # the settings the grid chose
    lines = format_table(trials, space, top=2).splitlines()
    header = lines[0].split()
    assert header[:3] == ["#", "state", "epochs"] and header[-5:] == ["S", "U", "H", "grid-alpha", "grid-gamma"]
    assert header[3:-5] == list(space.param_names)
    assert len(lines) == 3  # the header and the top 2; the errored trial has no row
    first = dict(zip(header, lines[1].split()))
    assert first == {**first, "#": "1", "state": "stopped_early", "epochs": "2/3", "lr": "0.00025", "momentum": "0",
                     "S": "50.00", "H": "70.00", "grid-alpha": "0.90", "grid-gamma": "1.50", "lambda_dis": "None"}
    assert dict(zip(header, lines[2].split()))["state"] == "completed"
    assert len({len(line) for line in lines}) == 1  # right-aligned columns


def test_summary_and_end_lines(space, tmp_path):
    best = trial("c", 0.7, lr=2.5e-4)
    refit = RefitResult(metrics={k: 0.5 for k in SUMMARY_KEYS}, epochs=2, seed=11, train_time=1.5,
                        curve={"curve_gamma": [0.0, 1.0]})
    result = outcome(space, trials=[best, trial("d", None, state="errored")], best=best, refits=Refits([refit]),
                     best_config_path="/r/msdn/best_config.yaml", best_run_name="t03 lr=2.5e-4", state="completed")
    summary = json.loads(json.dumps(summary_dict(result)))
    assert summary["best"]["trial_id"] == "c" and summary["best"]["best_epoch"] == 2
    assert summary["best"]["metrics"]["H"] == 0.7 and "curve_H" not in summary["best"]["metrics"]
    assert summary["refit"] == {**{k: 0.5 for k in SUMMARY_KEYS}, "epochs": 2, "seed": 11, "train_time": 1.5,
                                "config": "tuned", "checkpoint": None}
    assert summary["refits"]["seeds"] == [11] and summary["best_config"] == "/r/msdn/best_config.yaml"
    assert summary["trials"][1] == {"trial_id": "d", "params": {}, "error": None, "state": "errored", "epochs": 0,
                                    "metrics": {}}
    assert (summary["state"], summary["trial_states"], summary["best_run"]) == (
        "completed", {"completed": 1, "errored": 1}, "t03 lr=2.5e-4")
    assert summary["optuna_journal"] is None and summary["tracking_uri"] == "sqlite:///x.db"
    lines = end_lines(result)
    assert lines[0] == "\n2 trials: 1 completed, 1 errored"
    assert lines[1].startswith("best trial c at epoch 2: H=0.7000")
    assert lines[2] == ("TEST (refit on trainval, 2 epochs, gamma=0.50): S=0.5000 U=0.5000 H=0.5000 ZSL=0.5000 "
                        "AUSUC=0.5000")
    at = lines.index("best configuration: /r/msdn/best_config.yaml")
    assert lines[at + 1] == ("  rerun it: OMP_NUM_THREADS=1 python -m msdn.train --dataset synthetic --device cpu "
                             "--config /r/msdn/best_config.yaml")  # the refit's device and threads
    assert lines[-2:] == ["MLflow:  mlflow ui --backend-store-uri sqlite:///x.db", "         (experiment 'msdn-synthetic-val')"]
    assert all(len(line) <= 120 for text in lines for line in text.splitlines())


def outcome(space, **fields) -> StudyOutcome:
    """The outcome of a synthetic study stored under /r/msdn, tracked in sqlite:///x.db, then `fields`."""
    return StudyOutcome(experiment="msdn-synthetic-val", dataset="synthetic", protocol="val", metric=space.metric,
                        mode=space.mode, param_names=tuple(space.param_names), planned_trials=2, max_epochs=3,
                        experiment_path="/r/msdn", tracking_uri="sqlite:///x.db", experiment_id="1",
                        parent_run_id="run", **fields)


def refit(config: str, seed: int, H: float, epochs: int = 2) -> RefitResult:
    metrics = {"S": H + 0.05, "U": H - 0.05, "H": H, "zsl_acc": 0.6, "gamma": 1.5}
    return RefitResult(metrics=metrics, epochs=epochs, seed=seed, train_time=1.0, curve={}, config=config)


def test_a_long_command_breaks_before_its_last_option_and_still_pastes_as_one():
    from msdn.study.report import command_lines

    assert command_lines("  run: ", "python -m msdn.train --config a.yaml", width=80) == [
        "  run: python -m msdn.train --config a.yaml"]
    long = "python -m msdn.train --dataset cub --config /" + "x" * 80 + "/best_config.yaml"
    first, second = command_lines("  run: ", long, width=80)
    assert first == "  run: python -m msdn.train --dataset cub \\" and second.strip() == long[long.rfind("--config"):]
    import shlex
    assert shlex.split((first + "\n" + second).replace("\\\n", " "))[-2:] == ["--config", long.split()[-1]]


def test_refit_table_shows_each_configuration_over_seeds_and_the_paired_delta():
    refits = Refits(tuned=[refit(TUNED, s, H) for s, H in ((1, 0.62), (2, 0.58), (3, 0.66))],
                    baseline=[refit(BASELINE, s, H, 10) for s, H in ((1, 0.50), (2, 0.49), (3, 0.53))])
    lines = refit_lines(refits)
    assert lines[:2] == ["TEST (refit on trainval, each tested once; seeds 1, 2, 3)",
                         "  accuracies in %, mean ± sd [95% t interval over the seeds]:"]
    columns, S, U, H, zsl, delta, verdict = lines[2:]
    assert columns.split() == ["tuned", "(2", "epochs)", "authors'", "(10", "epochs)"]
    assert [row.split()[0] for row in (S, U, H, zsl)] == ["S", "U", "H", "ZSL"]
    # H of the tuned configuration: mean 62.00, sd 4.00, t interval 62 ± 4.303 * 4 / sqrt(3) = [52.06, 71.94];
    # the authors': 50.67 ± 2.08
    assert H.split()[0] == "H" and "62.00 ± 4.00 [52.06, 71.94]" in H and H.index("62.00") < H.index("50.67 ± 2.08")
    # per-seed differences 12, 9, 13: mean 11.33, interval 11.33 ± 4.303 * 2.08 / sqrt(3) = [6.16, 16.50]
    assert delta == "delta H (tuned - authors', paired by seed): +11.33 points, 95% interval [+6.16, +16.50]"
    assert verdict == "  (t interval of the 3 per-seed differences): the tuned configuration is better"
    assert len({len(line) for line in (columns, S, U, H, zsl)}) == 1  # aligned columns
    assert all(len(line) <= 100 for line in lines)
    close = Refits(tuned=[refit(TUNED, 1, 0.60), refit(TUNED, 2, 0.50)],
                   baseline=[refit(BASELINE, 1, 0.55), refit(BASELINE, 2, 0.52)])
    assert refit_lines(close)[-1].endswith("no clear difference at this number of seeds")
    # one seed: the single line of a study without seeds, then the authors' and the difference without interval
    single = refit_lines(Refits(tuned=[refit(TUNED, 1, 0.5)], baseline=[refit(BASELINE, 1, 0.45, 10)]))
    assert single == ["TEST (refit on trainval, 2 epochs, gamma=1.50): S=0.5500 U=0.4500 H=0.5000 ZSL=0.6000",
                      "TEST, authors' (refit on trainval, 10 epochs, gamma=1.50): S=0.5000 U=0.4000 "
                      "H=0.4500 ZSL=0.6000",
                      "delta H (tuned - authors', same seed): +5.00 points",
                      "  (one seed: no interval; --refit-seeds 3 or more gives one)"]
    assert refit_lines(Refits(tuned=[refit(TUNED, 1, 0.5)]))[1:] == []
    # the widest single lines (AUSUC, 3-digit epochs, a negative gamma) fit a person's 120 columns
    wide = [refit(config, 1, 0.5, 100) for config in (TUNED, BASELINE)]
    for r in wide:
        r.metrics.update(AUSUC=0.5, gamma=-2.0)
    assert all(len(line) <= 120 for line in refit_lines(Refits(tuned=wide[:1], baseline=wide[1:])))


def test_a_study_that_failed_at_start_leaves_nothing_that_blocks_a_retry(tmp_path):
    from msdn.study.conclude import remove_unstarted_experiment
    from msdn.study.options import experiment_path

    opts = with_defaults(StudyRequest(dataset="synthetic", storage_path=str(tmp_path), experiment="exp"), 4)
    folder = Path(experiment_path(opts))
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"state of a Tuner that never ran a trial")
    assert remove_unstarted_experiment(opts) and not folder.exists()

    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"x")
    (folder / "train_msdn_0001").mkdir()  # a trial started: its checkpoints may be worth resuming
    assert not remove_unstarted_experiment(opts) and (folder / "tuner.pkl").is_file()
    uri_opts = with_defaults(StudyRequest(dataset="synthetic", storage_path="s3://bucket/p", experiment="exp"), 4)
    assert not remove_unstarted_experiment(uri_opts)  # object storage is never deleted from


def test_settings_grid_lines_say_where_alpha_and_gamma_were_chosen():
    from msdn.study.report import grid_lines

    best = epoch(3, 0.4, H_grid=0.5, S_grid=0.6, U_grid=0.43, grid_alpha=0.85, grid_gamma=2.1, gamma=2.0)
    (line,) = grid_lines(best, "val")
    assert line.startswith("settings grid at the best epoch, chosen on validation: alpha=0.85 gamma=2.10: S=0.6000")
    configured, grid = grid_lines(best, "paper")  # both figures, each labelled as selected on the test split
    assert configured.startswith("paper protocol, configured gamma=2.00: S=0.5000 U=0.4000 H=0.4000")
    assert "selected on TEST" in configured and grid.endswith("(alpha, gamma and epoch selected on TEST)")
    assert "alpha=0.85 gamma=2.10: S=0.6000 U=0.4300 H=0.5000" in grid
    assert grid_lines(epoch(3, 0.4), "val") == [] and grid_lines(epoch(3, 0.4, H_grid=NAN), "paper") == []


def test_refit_table_gives_ausuc_and_its_paired_difference_after_h():
    def scored(config: str, seed: int, H: float, ausuc: float, epochs: int = 2) -> RefitResult:
        result = refit(config, seed, H, epochs)
        return dataclasses.replace(result, metrics={**result.metrics, "AUSUC": ausuc})

    refits = Refits(tuned=[scored(TUNED, s, H, A) for s, H, A in ((1, 0.62, 0.40), (2, 0.58, 0.36), (3, 0.66, 0.44))],
                    baseline=[scored(BASELINE, s, H, A, 10) for s, H, A in ((1, 0.5, 0.30), (2, 0.49, 0.31),
                                                                            (3, 0.53, 0.32))])
    lines = refit_lines(refits)
    assert [line.split()[0] for line in lines[3:8]] == ["S", "U", "H", "ZSL", "AUSUC"]
    # AUSUC of the tuned configuration: mean 40.00, sd 4.00, interval [30.06, 49.94]; the authors': 31.00 ± 1.00
    assert "40.00 ± 4.00 [30.06, 49.94]" in lines[7] and "31.00 ± 1.00" in lines[7]
    # per-seed differences 10, 5, 12: mean 9.00, sd 3.61, interval 9 ± 4.303 * 3.606 / sqrt(3) = [0.04, 17.96]
    assert lines[8].startswith("delta H (tuned - authors', paired by seed)")
    assert lines[10:] == ["delta AUSUC (tuned - authors', paired by seed): +9.00 points, 95% interval [+0.04, +17.96]",
                          "  (t interval of the 3 per-seed differences): the tuned configuration is better"]
    single = refit_lines(Refits(tuned=[scored(TUNED, 1, 0.5, 0.4)], baseline=[scored(BASELINE, 1, 0.45, 0.35, 10)]))
    assert single[0].endswith("H=0.5000 ZSL=0.6000 AUSUC=0.4000") and single[1].endswith("AUSUC=0.3500")
    assert single[4:] == ["delta AUSUC (tuned - authors', same seed): +5.00 points",
                          "  (one seed: no interval; --refit-seeds 3 or more gives one)"]


def test_ausuc_is_a_score_a_study_can_maximise_and_the_refits_summarise(tmp_path):
    from msdn.study.results import DELTA_KEYS, REFIT_KEYS
    from msdn.study.search_space import SearchSpaceError

    assert "AUSUC" in SCORE_KEYS and "AUSUC" in HEADLINE_KEYS and METRICS["AUSUC"] == "max"
    assert REFIT_KEYS == ("S", "U", "H", "zsl_acc", "AUSUC") and DELTA_KEYS == ("H", "AUSUC")
    text = (Path(__file__).parent / "data" / "study" / "space.yaml").read_text().replace("metric: H_grid",
                                                                                          "metric: AUSUC")
    (tmp_path / "ausuc.yaml").write_text(text)
    space = load_search_space(tmp_path / "ausuc.yaml", dataset="synthetic")
    assert (space.metric, space.mode) == ("AUSUC", "max")
    (tmp_path / "min.yaml").write_text(text.replace("mode: max", "mode: min"))
    with pytest.raises(SearchSpaceError, match="expected mode: max"):
        load_search_space(tmp_path / "min.yaml", dataset="synthetic")
