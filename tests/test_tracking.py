"""The MLflow callback's bookkeeping, driven by hand: a real SQLite store, fake trials, no Ray study.

Tune calls the callback's hooks; here the tests call them in the orders Tune does (start, results,
complete / error / recover, a resumed driver) and read the store back. Then the parent run's description
(`parent.study_description` of a study's outcome, exact markdown for each way a study ends) and its logging.
tests/test_conclude.py ends whole recorded studies in-process against such a store.
"""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from msdn.study import tracking
from msdn.study.outcome import StudyOutcome
from msdn.study.report import refit_lines
from msdn.study.results import BASELINE, TUNED, RefitResult, Refits, TrialRecord, TrialSummary
from msdn.study.search_space import load_search_space
from msdn.study.tracking.parent import NOTE_TAG, ParentRun, study_description
from msdn.study.tracking.writer import TrackingWriter

MAX_EPOCHS = 3


class FakeTrial:
    """What the callback reads from a Tune trial."""

    def __init__(self, trial_id: str, config: dict, error_file: str | None = None, number: int = 1) -> None:
        self.trial_id = trial_id
        self.config = config
        self.experiment_tag = f"{number}_" + ",".join(f"{k}={v}" for k, v in config.items())  # as Tune's
        self.last_result: dict = {}
        self.error_file = error_file

    def __str__(self) -> str:
        return f"train_msdn_{self.trial_id}"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str]:
    """One SQLite store for the module (creating one takes seconds); artifacts under the same folder."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment_id = tracking.client(uri).create_experiment("test", artifact_location=(folder / "artifacts").as_uri())
    return uri, experiment_id


@pytest.fixture
def study(store, request):
    """A fresh parent run in the shared store; returns (uri, experiment id, parent run id)."""
    uri, experiment_id = store
    parent = tracking.client(uri).create_run(experiment_id, run_name=request.node.name,
                                             tags={tracking.STUDY_TAG: "parent"})
    return uri, experiment_id, parent.info.run_id


@pytest.fixture
def writers():
    """Writers made by a test, closed after it."""
    made: list[TrackingWriter] = []
    yield made
    for writer in made:
        writer.close(30)


def callback(study, writers, stop=None) -> tracking.MLflowStudyCallback:
    uri, experiment_id, parent_run_id = study
    writer = TrackingWriter(uri, progress=None)
    writers.append(writer)
    return tracking.MLflowStudyCallback(writer, experiment_id, parent_run_id, MAX_EPOCHS,
                                        tags={tracking.STUDY_TAG: "trial", "dataset": "synthetic"}, stop=stop)


def sync(cb: tracking.MLflowStudyCallback) -> None:
    """Wait until the callback's writer has logged everything queued so far."""
    assert cb.writer.flush(60), cb.writer.pending()


def report(cb: tracking.MLflowStudyCallback, trial: FakeTrial, epoch: int) -> None:
    """One epoch's result as a trial reports it: metrics, settings, the curve, placement, Tune bookkeeping."""
    result = {
        "training_iteration": epoch, "epoch": epoch, "S": 0.5 + epoch / 100, "U": 0.4, "H": 0.1 * epoch,
        "zsl_acc": 0.6, "loss": 1.0 / epoch, "gamma": 2.0, "trial_seed": 7, "done": False,
        "time_this_iter_s": 0.1, "curve_H": [0.1, 0.2], "config": dict(trial.config),
        "placement_host": "node-a", "placement_node_id": "abc", "placement_gpu_ids": "none",
    }
    trial.last_result = result
    cb.on_trial_result(0, [], trial, result)


def children(study) -> dict:
    """The parent's child runs by their trial_id tag."""
    uri, experiment_id, parent_run_id = study
    return {r.data.tags[tracking.TRIAL_ID_TAG]: r for r in tracking.child_runs(uri, experiment_id, parent_run_id)}


def steps(study, run, metric: str = "H") -> list[int]:
    return sorted(m.step for m in tracking.client(study[0]).get_metric_history(run.info.run_id, metric))


def test_one_child_run_per_trial_with_params_metrics_and_final_state(study, writers):
    cb = callback(study, writers)
    full = FakeTrial("t1", {"lr": 5e-4, "momentum": 0.9}, number=1)
    early = FakeTrial("t2", {"lr": 1e-3, "momentum": 0.0}, number=2)
    for trial in (full, early):
        cb.on_trial_start(0, [], trial)
    for epoch in range(1, MAX_EPOCHS + 1):
        report(cb, full, epoch)
    report(cb, early, 1)
    cb.on_trial_complete(0, [], early)  # ASHA stopped it after one epoch
    cb.on_trial_complete(0, [], full)
    sync(cb)

    runs = children(study)
    assert set(runs) == {"t1", "t2"}
    for trial_id, run in runs.items():
        assert run.data.tags[tracking.PARENT_TAG] == study[2]
        assert run.data.tags[tracking.STUDY_TAG] == "trial" and run.data.tags["dataset"] == "synthetic"
        assert run.info.status == "FINISHED"
        assert run.data.tags["placement.host"] == "node-a" and run.data.tags["placement.node_id"] == "abc"
    t1, t2 = runs["t1"], runs["t2"]
    assert (t1.info.run_name, t2.info.run_name) == ("t01 lr=5.0e-4 mom=0.90", "t02 lr=1.0e-3 mom=0")
    assert t1.data.params == {"lr": "0.0005", "momentum": "0.9"}
    assert (t1.data.tags["trial_state"], t1.data.tags["epochs_trained"]) == ("completed", "3")
    assert (t2.data.tags["trial_state"], t2.data.tags["epochs_trained"]) == ("stopped_early", "1")
    assert steps(study, t1) == [1, 2, 3] and steps(study, t1, "loss") == [1, 2, 3]
    assert steps(study, t2) == [1]
    # settings, curves, placement and Tune's bookkeeping are not metrics of the model
    assert set(t1.data.metrics) == {"S", "U", "H", "zsl_acc", "loss"}


def test_resumed_driver_continues_each_trials_run_without_repeating_epochs(study, writers):
    first = callback(study, writers)
    trial = FakeTrial("t1", {"lr": 5e-4})
    first.on_trial_start(0, [], trial)
    report(first, trial, 1)
    report(first, trial, 2)
    sync(first)
    assert children(study)["t1"].info.run_name == "t01 lr=5.0e-4"
    # a run begun under another name (an older version of the study) keeps it: a resume never renames
    tracking.client(study[0]).update_run(children(study)["t1"].info.run_id, name="train_msdn_t1")
    # Tune pickles callbacks with the experiment: no writer, thread or run bookkeeping goes with it
    restored = pickle.loads(pickle.dumps(first))
    assert not isinstance(restored, tracking.MLflowStudyCallback)
    # the driver dies; the resumed study builds a new callback on the same parent run
    resumed = callback(study, writers)
    resumed.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3):  # Tune re-sends the results after the last checkpoint
        report(resumed, trial, epoch)
    resumed.on_trial_complete(0, [], trial)
    sync(resumed)

    runs = children(study)
    assert list(runs) == ["t1"]  # the same run, not a second one
    assert runs["t1"].info.run_name == "train_msdn_t1"
    assert steps(study, runs["t1"]) == [1, 2, 3]
    assert runs["t1"].data.tags["trial_state"] == "completed" and runs["t1"].info.status == "FINISHED"


def test_errored_trial_fails_its_run_with_the_error(study, writers, tmp_path):
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback ...\nRuntimeError: training diverged\n")
    cb = callback(study, writers)
    trial = FakeTrial("t1", {"lr": 1.0}, error_file=str(error_file))
    cb.on_trial_start(0, [], trial)
    report(cb, trial, 1)
    cb.on_trial_error(0, [], trial)
    sync(cb)

    run = children(study)["t1"]
    assert run.info.status == "FAILED" and run.data.tags["trial_state"] == "errored"
    assert "training diverged" in run.data.tags["error"]
    artifacts = [a.path for a in tracking.client(study[0]).list_artifacts(run.info.run_id)]
    assert artifacts == ["error.txt"]


def test_recovered_trial_counts_retries_and_keeps_its_run(study, writers, tmp_path):
    error_file = tmp_path / "error.txt"
    error_file.write_text("the node died\n")
    cb = callback(study, writers)
    trial = FakeTrial("t1", {"lr": 5e-4}, error_file=str(error_file))
    cb.on_trial_start(0, [], trial)
    report(cb, trial, 1)
    cb.on_trial_recover(0, [], trial)
    sync(cb)
    run = children(study)["t1"]
    assert run.data.tags["trial_state"] == "retrying" and run.data.tags["retries"] == "1"
    assert run.data.tags["retry_1_error"] == "the node died\n"

    cb.on_trial_recover(0, [], trial)
    sync(cb)
    assert children(study)["t1"].data.tags["retries"] == "2"
    cb.on_trial_start(0, [], trial)  # restarted, perhaps on another node: placement is recorded again
    report(cb, trial, 2)
    cb.on_trial_complete(0, [], trial)
    sync(cb)
    runs = children(study)
    assert list(runs) == ["t1"] and runs["t1"].data.tags["trial_state"] == "stopped_early"
    assert steps(study, runs["t1"]) == [1, 2]


def test_close_open_runs_ends_only_unfinished_trials(study, writers):
    cb = callback(study, writers)
    done, running = FakeTrial("t1", {"lr": 5e-4}), FakeTrial("t2", {"lr": 1e-3})
    for trial in (done, running):
        cb.on_trial_start(0, [], trial)
        report(cb, trial, 1)
    cb.on_trial_complete(0, [], done)
    cb.close_open_runs("KILLED")
    sync(cb)
    runs = children(study)
    assert runs["t1"].info.status == "FINISHED" and runs["t1"].data.tags["trial_state"] == "stopped_early"
    assert runs["t2"].info.status == "KILLED" and runs["t2"].data.tags["trial_state"] == "interrupted"


class StopAsked:
    """What the callback reads of msdn.study.interrupt.StopRequests."""

    requested = True


def test_trials_ending_after_a_stop_request_are_interrupted_not_finished(study, writers, tmp_path):
    cb = callback(study, writers, stop=StopAsked())
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback ...\nRayActorError: the actor died\n")
    short, full = FakeTrial("t1", {"lr": 5e-4}), FakeTrial("t2", {"lr": 1e-3})
    failing = FakeTrial("t3", {"lr": 2e-3}, error_file=str(error_file))
    for trial in (short, full, failing):
        cb.on_trial_start(0, [], trial)
    report(cb, short, 1)
    report(cb, failing, 1)
    for epoch in range(1, MAX_EPOCHS + 1):
        report(cb, full, epoch)
    cb.on_trial_complete(0, [], short)  # Tune ends running trials when it stops: not ASHA's decision
    cb.on_trial_complete(0, [], full)  # it had reached max epochs before the stop
    cb.on_trial_error(0, [], failing)  # an error while stopping: --resume retries it, as an interrupted trial
    sync(cb)
    runs = children(study)
    assert runs["t1"].info.status == "KILLED" and runs["t1"].data.tags["trial_state"] == "interrupted"
    assert runs["t2"].info.status == "FINISHED" and runs["t2"].data.tags["trial_state"] == "completed"
    assert runs["t3"].info.status == "KILLED" and runs["t3"].data.tags["trial_state"] == "interrupted"
    assert "the actor died" in runs["t3"].data.tags["error"]
    assert cb.ends.states == {"t1": "interrupted", "t2": "completed", "t3": "interrupted"}


def test_scalar_metrics_keeps_finite_numbers_of_the_model_only():
    result = {"H": 0.5, "loss": float("nan"), "S": True, "U": "0.3", "gamma": 2.0, "trial_seed": 3,
              "training_iteration": 2, "curve_H": [0.1], "placement_host": "x", "config/lr": 0.1, "zsl_acc": 1}
    assert tracking.scalar_metrics(result) == {"H": 0.5, "zsl_acc": 1.0}


def test_tracking_uri_checks(tmp_path):
    tracking.check_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(tracking.TrackingError, match="does not exist"):
        tracking.check_tracking_uri(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    with pytest.raises(tracking.TrackingError, match="expected sqlite"):
        tracking.check_tracking_uri("ftp://host/x")
    assert tracking.default_tracking_uri(tmp_path) == f"sqlite:///{Path(tmp_path).resolve() / 'mlflow.db'}"


def record(trial_id: str, epochs: int, error: str | None = None) -> TrialRecord:
    """Tune's record of a trial (`results.trial_records`) that reported `epochs` epochs."""
    return TrialRecord(trial_id, {"lr": 0.1}, [{"training_iteration": e, "H": 0.1 * e, "S": 0.5, "trial_id": trial_id,
                                               "config/lr": 0.1} for e in range(1, epochs + 1)], error)


def test_reconcile_completes_runs_from_tunes_results_after_a_hard_kill(study, writers):
    killed = callback(study, writers)  # the first driver logged two epochs of t1, and a trial Tune never saved
    t1, ghost = FakeTrial("t1", {"lr": 5e-4}), FakeTrial("t9", {"lr": 1e-3})
    for trial in (t1, ghost):
        killed.on_trial_start(0, [], trial)
    report(killed, t1, 1)
    report(killed, t1, 2)
    sync(killed)
    resumed = callback(study, writers)  # Tune's snapshot says t1 finished 3 epochs; it knows t2 (no result), not t9
    resumed.reconcile([record("t1", 3), record("t2", 0, error="boom")])
    sync(resumed)
    runs = children(study)
    assert set(runs) == {"t1"}  # t9's run is deleted: it is not a trial of the restored study
    assert steps(study, runs["t1"]) == [1, 2, 3]
    assert runs["t1"].info.status == "FINISHED" and runs["t1"].data.tags["trial_state"] == "completed"


# -- the parent run's description (tracking/parent.py: study_description of the outcome, ParentRun.end) ----------
REPO = Path(__file__).resolve().parents[1]
BEST_RUN = "t02 lr=3.1e-4 λdis=2.0e-3 λcal=0.12"
PROTOCOL = ("- **Protocol:** val: trials train on train classes and report validation metrics; the best is refit and "
            "tested once")
BEST_LINES = [
    f"- **Best trial:** `{BEST_RUN}` (trial_id 6b63844f), epoch 3 of 4 trained: validation H_grid = 0.4123 "
    "(S_grid 0.6000, U_grid 0.3100)",
    "- **Best configuration:** `lambda_dis=2.01e-3`, `lambda_cal=0.123`, `lr=3.12e-4`, `lr_v_factor=1.23`, "
    "`weight_decay=1.00e-4`, `momentum=0.900`, `alpha=0.850`, `gamma=2.30`",
]


def described(states=("completed", "stopped_early", "stopped_early"), **changes) -> StudyOutcome:
    """The outcome of a completed synthetic study of 3 planned trials with one tuned refit: its best trial first,
    then trials in `states` after the first; then `changes`."""
    space = load_search_space(REPO / "search_spaces" / "synthetic.yaml", "synthetic")
    params = {"lambda_dis": 0.0020137, "lambda_cal": 0.12345, "lr": 0.00031234, "lr_v_factor": 1.234,
              "weight_decay": 0.0001, "momentum": 0.9, "alpha": 0.85, "gamma": 2.3}
    best = TrialSummary("6b63844f", states[0], 4, params, best_epoch=3,
                        best={"H_grid": 0.41234, "S_grid": 0.6, "U_grid": 0.31, "S": 0.5, "U": 0.3, "H": 0.375,
                              "training_iteration": 3})
    others = [TrialSummary(f"0000000{i}", state, 1, {}) for i, state in enumerate(states[1:])]
    refit = RefitResult(metrics={"S": 0.6, "U": 0.5, "H": 0.5, "zsl_acc": 0.55, "gamma": 2.3}, epochs=3, seed=3,
                        train_time=3.0, curve={}, config=TUNED)
    fields = dict(experiment="msdn-synthetic-val", dataset="synthetic", protocol="val", metric=space.metric,
                  mode=space.mode, param_names=tuple(space.param_names), planned_trials=3, max_epochs=4,
                  experiment_path="results/msdn-synthetic-val", tracking_uri="sqlite:///mlflow.db", experiment_id="1",
                  parent_run_id="parent", state="completed", trials=[best, *others], best=best,
                  best_run_name=BEST_RUN, refits=Refits([refit]),
                  best_config_path="results/msdn-synthetic-val/best_config.yaml")
    return StudyOutcome(**{**fields, **changes})


def test_description_of_a_completed_study_with_one_refit():
    text = study_description(described())
    assert text.splitlines() == [
        "**Study `msdn-synthetic-val` on synthetic: completed**",
        "",
        "- **Trials:** 3 (1 completed, 2 stopped_early, 0 errored, 0 interrupted)",
        *BEST_LINES,
        "- **best_config.yaml:** `results/msdn-synthetic-val/best_config.yaml`",
        PROTOCOL,
        "",
        "**Test** (refits on trainval, each tested once: the study's one look at the test split):",
        "",
        "```text",
        "TEST (refit on trainval, 3 epochs, gamma=2.30): S=0.6000 U=0.5000 H=0.5000 ZSL=0.5500",
        "```",
    ]


def test_description_gives_the_refits_intervals_and_the_paired_difference_as_the_report_does():
    def refit(config, seed, H):
        return RefitResult(metrics={"S": 0.6, "U": 0.5, "H": H, "zsl_acc": 0.55, "gamma": 2.0}, seed=seed,
                           epochs=3 if config == TUNED else 10, train_time=3.0, curve={}, config=config)

    refits = Refits([refit(TUNED, s, h) for s, h in ((3, .50), (8, .52), (9, .49))],
                    [refit(BASELINE, s, h) for s, h in ((3, .45), (8, .47), (9, .46))])
    text = study_description(described(refits=refits))
    block = text.split("```text\n")[1].split("\n```")[0].splitlines()
    assert block == refit_lines(refits)
    assert block[0] == "TEST (refit on trainval, each tested once; seeds 3, 8, 9)"
    assert block[2].split() == ["tuned", "(3", "epochs)", "authors'", "(10", "epochs)"]
    assert block[3].split()[:3] == ["S", "60.00", "±"]
    assert block[-2] == "delta H (tuned - authors', paired by seed): +4.33 points, 95% interval [+1.46, +7.20]"


def test_description_of_a_study_interrupted_during_the_trials_says_what_is_missing():
    outcome = described(("completed", "interrupted"), best=None, refits=None, best_config_path=None,
                        state="interrupted")
    assert study_description(outcome).splitlines() == [
        "**Study `msdn-synthetic-val` on synthetic: interrupted**",
        "",
        "- **Missing:** the best configuration and the test result: the trials did not finish. Continue it with the "
        "same command plus `--resume`.",
        "- **Trials:** 2 of 3 (1 completed, 0 stopped_early, 0 errored, 1 interrupted)",
        PROTOCOL,
    ]


def test_description_of_a_study_interrupted_during_the_refits_keeps_the_best_configuration():
    text = study_description(described(refits=None, best_config_path=None, state="interrupted"))
    assert text.splitlines() == [
        "**Study `msdn-synthetic-val` on synthetic: interrupted**",
        "",
        "- **Missing:** the test result: the refits did not finish (the finished ones are kept). Continue it with "
        "the same command plus `--resume`.",
        "- **Trials:** 3 (1 completed, 2 stopped_early, 0 errored, 0 interrupted)",
        *BEST_LINES,
        PROTOCOL,
    ]


def test_description_of_a_failed_study_names_the_error_on_one_line():
    error = ("StudyFailed: every trial failed; the first error:\nTraceback (most recent call last):\n  ...\n"
             "ValueError: nan")
    text = study_description(described(("errored",) * 3 + ("no result",), best=None, refits=None,
                                       best_config_path=None, state="failed", error=error))
    assert text.splitlines()[2:4] == [
        "- **Failed:** StudyFailed: every trial failed; the first error: … ValueError: nan",
        "- **Trials:** 4 of 3 (0 completed, 0 stopped_early, 3 errored, 0 interrupted, 1 no result)",
    ]


def test_description_without_a_refit():
    text = study_description(described(("completed",) * 3, refits=None))
    assert text.splitlines()[-2:] == ["", "**Test:** not run (`--no-refit`)."]
    lines = study_description(described(("completed",) * 3, refits=None, protocol="paper")).splitlines()
    assert lines[-3].startswith("- **Protocol:** paper: trains on trainval and reports TEST metrics every epoch")
    assert "epoch 3 of 4 trained: test (paper protocol: selected on test) H_grid = 0.4123" in lines[3]
    assert lines[-1] == ("**Test:** no refit under the paper protocol: the figures above are test-split figures "
                         "selected on the test split (as published).")


def test_description_gives_the_figures_that_go_with_the_study_metric():
    outcome = described()
    outcome.best.best["loss"] = 1.25
    for metric, figures in (("H", "H = 0.3750 (S 0.5000, U 0.3000)"),
                            ("loss", "loss = 1.2500 (S 0.5000, U 0.3000, H 0.3750)")):
        text = study_description(dataclasses.replace(outcome, metric=metric))
        assert f"epoch 3 of 4 trained: validation {figures}\n" in text


def test_the_parent_run_ends_with_its_state_and_the_description_of_its_outcome(study, writers):
    uri, experiment_id, run_id = study
    writer = TrackingWriter(uri, progress=None)
    writers.append(writer)
    parent = ParentRun(writer, experiment_id, run_id)
    outcome = described(("completed", "interrupted"), best=None, refits=None, best_config_path=None,
                        state="interrupted")
    parent.end(outcome)
    assert writer.flush(60)
    run = tracking.client(uri).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["study_state"] == "interrupted"
    assert run.data.tags[NOTE_TAG] == study_description(outcome)
