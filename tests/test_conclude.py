"""The end of a study (msdn/study/conclude.py), in-process: recorded Tune results, a real SQLite MLflow store.

tests/data/study/ holds what a real study's end reads of Tune (`results.TrialRecord`s of a 10-trial study,
its refits' results and its Optuna journal; of a study whose every trial diverged), recorded by
tests/data/study/record.py. Each test replays those trials through the real Tune callbacks (the MLflow
callback and the console's counter, sharing one `TrialEnds`) in the order Tune calls them, then ends the
study with `conclude`, as `runner.run_study` does after `Tuner.fit`, and checks the console, the MLflow
store and study_summary.json against the one `StudyOutcome`. No Ray is started: the refits are found in
the study's storage (written here from the recorded ones), as a resumed study finds them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from msdn.study import tracking
from msdn.study.conclude import StudyEnd, base_config, conclude
from msdn.study.console import PlainDisplay, TrialCounter
from msdn.study.options import StudyFailed, StudyRequest, resolve_options
from msdn.study.refit import RefitStore, refit_plan
from msdn.study.report import end_lines, interrupted_lines, summary_dict
from msdn.study.results import (RefitResult, TrialEnds, TrialRecord, best_trial, trial_state, trial_summaries)
from msdn.study.tracking.parent import NOTE_TAG, ParentRun, study_description, trial_tags

DATA = Path(__file__).resolve().parent / "data" / "study"
EXPERIMENT = "msdn-synthetic-val"  # the recorded study's name: its Optuna journal holds a study of that name
RESOURCES = {"cpu": 1.0, "gpu": 0.0}


def recorded(name: str) -> dict:
    data = json.loads((DATA / name).read_text())
    data["records"] = [TrialRecord.from_json(r) for r in data["records"]]
    return data


COMPLETED = recorded("completed.json")
FAILED = recorded("failed.json")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one takes seconds); each test has its own parent run."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


class ReplayTrial:
    """A Tune trial as the callbacks read it, replayed from its record."""

    def __init__(self, record: TrialRecord) -> None:
        self.record = record
        self.trial_id, self.config = record.trial_id, dict(record.config)
        self.experiment_tag = record.experiment_tag or ""
        self.status, self.last_result, self.error_file = "PENDING", {}, None


class Study:
    """A study's driver after Ray is up: its parent run, its callbacks, and a stop request to make."""

    def __init__(self, tmp_path: Path, uri: str, synthetic_root: Path, records: list[TrialRecord], **options) -> None:
        args = dict(dataset="synthetic", search_space=DATA / "space.yaml", num_samples=10, max_epochs=4, seed=5,
                    refit_seeds=2, storage_path=str(tmp_path / "results"), mlflow_uri=uri,
                    data_root=str(synthetic_root), experiment=EXPERIMENT, tracking_timeout=60.0)
        self.opts, self.space = resolve_options(StudyRequest(**{**args, **options}))
        self.folder = tmp_path
        self.console: list[str] = []
        self.stop = SimpleNamespace(requested=False, signal_name=None)
        self.ends = TrialEnds(self.opts.max_epochs, self.stop)
        self.parent = ParentRun.open(self.opts, self.space, cluster={"ray.nodes": "1"}, progress=None)
        self.callback = tracking.MLflowStudyCallback(self.parent.writer, self.parent.experiment_id, self.parent.run_id,
                                                     self.opts.max_epochs, tags=trial_tags(self.opts), ends=self.ends,
                                                     inputs=self.parent.trial_inputs)
        self.counter = TrialCounter(PlainDisplay(self.console.append, self.space.metric, interval=None),
                                    total=self.opts.num_samples, max_epochs=self.opts.max_epochs,
                                    metric=self.space.metric, mode=self.space.mode, stop=self.stop, ends=self.ends)
        self.trials = {r.trial_id: ReplayTrial(r) for r in records}

    # -- Tune's hooks, in Tune's order --------------------------------------------------------------------------
    def _hook(self, name: str, trial: ReplayTrial, *args, callbacks: tuple = ()) -> None:
        for callback in callbacks or (self.callback, self.counter):
            getattr(callback, name)(0, list(self.trials.values()), trial, *args)

    def start(self, trial_id: str, epochs: int | None = None, callbacks: tuple = ()) -> None:
        """Trial `trial_id` starts and reports the first `epochs` of its recorded epochs (all by default)."""
        trial = self.trials[trial_id]
        trial.status = "RUNNING"
        self._hook("on_trial_start", trial, callbacks=callbacks)
        for row in trial.record.results[:epochs]:
            trial.last_result = row
            self._hook("on_trial_result", trial, row, callbacks=callbacks)

    def complete(self, trial_id: str, callbacks: tuple = ()) -> None:
        """Tune ends the trial (ASHA stopped it, it ran its epochs, or the study is stopping)."""
        trial = self.trials[trial_id]
        trial.status = "TERMINATED"
        self._hook("on_trial_complete", trial, callbacks=callbacks)

    def ended_before_the_resume(self, trial_id: str) -> None:
        """The trial ran and ended under the driver before this one (its own MLflow callback); this driver's Tune
        restores it as ended (TERMINATED) and its loop shows it so at its first step."""
        earlier = tracking.MLflowStudyCallback(self.parent.writer, self.parent.experiment_id, self.parent.run_id,
                                               self.opts.max_epochs, tags=trial_tags(self.opts))
        self.start(trial_id, callbacks=(earlier,))
        self.complete(trial_id, callbacks=(earlier,))
        self.counter.on_step_end(0, list(self.trials.values()))

    def error(self, trial_id: str, text: str) -> None:
        """The trial fails with `text` in its error file."""
        trial = self.trials[trial_id]
        trial.status, trial.error_file = "ERROR", str(self.folder / f"error-{trial_id}.txt")
        Path(trial.error_file).write_text(text)
        self._hook("on_trial_error", trial)

    def run(self, trial_id: str) -> None:
        self.start(trial_id)
        self.complete(trial_id)

    def request_stop(self) -> None:
        """Ctrl+C: the study's StopRequests records it."""
        self.stop.requested, self.stop.signal_name = True, "SIGINT"

    def conclude(self, records: list[TrialRecord]):
        end = StudyEnd(self.opts, self.space, self.parent, self.callback, self.ends, RESOURCES, self.console.append,
                       str(self.folder / "study.log"))
        return conclude(end, lambda: records)

    # -- the MLflow store, read back --------------------------------------------------------------------------
    def client(self):
        return tracking.client(self.opts.mlflow_uri)

    def parent_run(self):
        return self.client().get_run(self.parent.run_id)

    def trial_runs(self) -> dict:
        """The parent's trial runs by their trial_id tag."""
        runs = tracking.child_runs(self.opts.mlflow_uri, self.parent.experiment_id, self.parent.run_id)
        return {r.data.tags[tracking.TRIAL_ID_TAG]: r for r in runs if tracking.TRIAL_ID_TAG in r.data.tags}

    def refit_runs(self) -> list:
        runs = tracking.child_runs(self.opts.mlflow_uri, self.parent.experiment_id, self.parent.run_id)
        return [r for r in runs if r.data.tags.get(tracking.STUDY_TAG) == "refit"]

    def steps(self, run, metric: str = "H") -> list[int]:
        return sorted(m.step for m in self.client().get_metric_history(run.info.run_id, metric))


def store_recorded_refits(study: Study, records: list[TrialRecord], refits: list[dict]) -> None:
    """Put the recorded refits' results where the study's refit plan looks for them (RefitStore), as finished
    refits leave them: each with the TrainConfig the plan gives it today, and a stand-in checkpoint."""
    opts, space = study.opts, study.space
    best = best_trial(trial_summaries(records, space.metric, space.mode, opts.max_epochs), space.metric, space.mode)
    store, stand_in = RefitStore.of(opts), study.folder / "checkpoint.pt"
    stand_in.write_bytes(b"a recorded refit: no weights")
    pool = {config: [r for r in refits if r["config"] == config] for config in ("tuned", "baseline")}
    for spec in refit_plan(opts, base_config(opts, space), space.fixed, best):
        result = RefitResult(**{**pool[spec.config].pop(0), "seed": spec.seed, "train_config": spec.train_config})
        store.save(result, stand_in)


def expected_state(record: TrialRecord, max_epochs: int = 4) -> str:
    return trial_state(record.epochs, max_epochs, record.error is not None)


def test_a_completed_study_renders_one_outcome_on_the_console_in_mlflow_and_in_its_summary(
        tmp_path, mlflow_uri, synthetic_root):
    records = COMPLETED["records"]
    study = Study(tmp_path, mlflow_uri, synthetic_root, records)
    journal = Path(study.opts.storage_path) / EXPERIMENT / "optuna_study.journal"
    journal.parent.mkdir(parents=True)
    journal.write_bytes((DATA / "optuna_study.journal").read_bytes())
    store_recorded_refits(study, records, COMPLETED["refits"])
    with study.counter:
        for record in records:
            study.run(record.trial_id)
    outcome = study.conclude(records)

    # the outcome: every trial in the state its end gave it, the best by the study metric, the refits' statistics
    assert outcome.state == "completed" and not outcome.interrupted and outcome.error is None
    states = {t.trial_id: t.state for t in outcome.trials}
    assert states == {r.trial_id: expected_state(r) for r in records} == study.ends.states
    assert set(states.values()) == {"completed", "stopped_early"}
    best = max(outcome.trials, key=lambda t: t.score("H_grid"))
    assert outcome.best == best and outcome.chosen_settings == {"alpha": best.params["alpha"],
                                                                 "gamma": best.params["gamma"]}
    assert len(outcome.refits.tuned) == len(outcome.refits.baseline) == 2
    assert outcome.unlogged == [] and outcome.dropped == []

    # the console: one line per trial as it ended, then the end lines of the same outcome
    trial_lines = [line for line in study.console if re.match(r"t\d\d ", line)]
    assert len(trial_lines) == len(records)
    words = {"completed": "completed", "stopped_early": "stopped early"}
    for record in records:
        (line,) = [line for line in trial_lines if record.trial_id in line]
        assert words[states[record.trial_id]] in line and f"{record.epochs}/4 epochs" in line
    tail = end_lines(outcome)
    assert study.console[-len(tail):] == tail
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items()))
    assert tail[0] == f"\n{len(records)} trials: {counts}" and tail[1].startswith(f"best trial {best.trial_id} at epoch")
    assert any(line.startswith("parameter importances (fANOVA, COMPLETE trials): ") for line in study.console)
    assert "TEST (refit on trainval, each tested once; seeds " in "\n".join(tail)

    # MLflow: the parent run ended as the outcome says, its description rendered from it
    parent = study.parent_run()
    assert parent.info.status == "FINISHED" and parent.data.tags["study_state"] == "completed"
    description = parent.data.tags[NOTE_TAG]
    assert description == study_description(outcome)
    counted = ", ".join(f"{outcome.counts.get(s, 0)} {s}" for s in ("completed", "stopped_early", "errored",
                                                                    "interrupted"))
    assert f"- **Trials:** 10 ({counted})" in description
    runs = study.trial_runs()
    assert set(runs) == set(states)  # one run per trial
    for trial_id, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == states[trial_id]
        epochs = int(run.data.tags["epochs_trained"])
        assert study.steps(run) == list(range(1, epochs + 1))
    # the best trial's run name, found without reading MLflow, is its run's name
    assert outcome.best_run_name == runs[best.trial_id].info.run_name
    assert f"- **Best trial:** `{outcome.best_run_name}` (trial_id {best.trial_id})" in description
    metrics = parent.data.metrics
    assert metrics["best_H_grid"] == pytest.approx(best.best["H_grid"])
    assert metrics["test_H"] == pytest.approx(sum(r.metrics["H"] for r in outcome.refits.tuned) / 2)
    assert {"test_H_ci_low", "baseline_test_H_mean", "delta_H_mean"} <= set(metrics)
    assert {f"importance.{name}" for name in study.space.param_names} <= set(metrics)
    assert parent.data.params["best.lr"] == str(best.params["lr"])
    assert sorted(r.info.run_name for r in study.refit_runs()) == sorted(
        f"refit {'tuned' if r.config == 'tuned' else 'authors'} seed={r.seed}"
        for r in outcome.refits.tuned + outcome.refits.baseline)
    artifacts = {a.path for a in study.client().list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "study_summary.json", "plots", "refit_checkpoints", "search_space"} <= artifacts
    plots = {a.path for a in study.client().list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimisation_history.png", "plots/calibration_curve_refit_test.png",
            "plots/param_importances.png"} <= plots

    # study_summary.json: the same outcome
    local = study.client().download_artifacts(parent.info.run_id, "study_summary.json", str(tmp_path))
    summary = json.loads(Path(local).read_text())
    assert summary == json.loads(json.dumps(summary_dict(outcome), default=str))
    assert summary["state"] == "completed" and summary["trial_states"] == outcome.counts
    assert summary["best"]["trial_id"] == best.trial_id and summary["best_run"] == outcome.best_run_name
    assert Path(outcome.best_config_path).is_file() and summary["best_config"] == outcome.best_config_path


def test_an_interrupted_study_gives_an_errored_trial_one_state_everywhere(tmp_path, mlflow_uri, synthetic_root):
    records = COMPLETED["records"]
    error = FAILED["records"][0].error  # a real trial's error (it diverged), here while the study stops
    study = Study(tmp_path, mlflow_uri, synthetic_root, records, refit=False)
    done, (failing, ended, running, pending) = records[:-4], [r.trial_id for r in records[-4:]]
    earlier = next(r.trial_id for r in done if r.epochs < 4)  # stopped early by ASHA before a resume
    with study.counter:
        study.ended_before_the_resume(earlier)
        for record in done:
            if record.trial_id != earlier:
                study.run(record.trial_id)
        for trial_id in (failing, ended, running):
            study.start(trial_id, epochs=1)
        study.request_stop()  # Ctrl+C; then Tune ends one trial, one errors, one stays running
        study.error(failing, error)
        study.complete(ended)
    # Tune's record of the stopped study: the cut-off trials with the epochs they reached, one never started
    cut = {failing: 1, ended: 1, running: 1, pending: 0}
    tune_records = [TrialRecord(r.trial_id, r.config, r.results[:cut.get(r.trial_id)],
                                error if r.trial_id == failing else None, r.experiment_tag) for r in records]
    outcome = study.conclude(tune_records)

    assert outcome.state == "interrupted" and outcome.interrupted and outcome.stop_signal == "SIGINT"
    states = {t.trial_id: t.state for t in outcome.trials}
    assert {t: states[t] for t in cut} == dict.fromkeys(cut, "interrupted")
    assert all(states[r.trial_id] == expected_state(r) for r in done) and states[earlier] == "stopped_early"
    assert outcome.best is None and outcome.refits is None and outcome.best_config_path is None
    # the console: the trial that errored while the study stopped is interrupted, with its error
    (line,) = [line for line in study.console if failing in line]
    assert "  interrupted  " in line and "FloatingPointError: training diverged" in line
    assert study.console[-len(interrupted_lines(outcome)):] == interrupted_lines(outcome)
    assert not any(line.startswith("top trials") or "TEST" in line for line in study.console)
    # MLflow: the same state on every run, none left RUNNING; the parent KILLED, described from the outcome
    runs = study.trial_runs()
    assert set(runs) == set(states) - {pending}  # a trial that never started has no run
    for trial_id, run in runs.items():
        assert run.data.tags["trial_state"] == states[trial_id], trial_id
        assert run.info.status == ("KILLED" if states[trial_id] == "interrupted" else "FINISHED"), trial_id
    assert "training diverged" in runs[failing].data.tags["error"]
    parent = study.parent_run()
    assert parent.info.status == "KILLED" and parent.data.tags["study_state"] == "interrupted"
    assert parent.data.tags[NOTE_TAG] == study_description(outcome)
    lines = parent.data.tags[NOTE_TAG].splitlines()
    assert lines[2].startswith("- **Missing:** the best configuration and the test result")
    c = outcome.counts
    assert lines[3] == (f"- **Trials:** 10 ({c.get('completed', 0)} completed, {c.get('stopped_early', 0)} "
                        f"stopped_early, 0 errored, 4 interrupted)")
    assert "test_H" not in parent.data.metrics and "best_H_grid" not in parent.data.metrics
    assert "study_summary.json" not in {a.path for a in study.client().list_artifacts(parent.info.run_id)}


def test_a_study_whose_every_trial_failed_fails_with_the_first_error(tmp_path, mlflow_uri, synthetic_root):
    records = FAILED["records"]
    study = Study(tmp_path, mlflow_uri, synthetic_root, records, search_space=DATA / "diverge.yaml", num_samples=2,
                  max_epochs=2, max_failures=0)
    with study.counter:
        for record in records:
            study.start(record.trial_id)
            study.error(record.trial_id, record.error)
    with pytest.raises(StudyFailed, match="every trial failed; the first error:") as failure:
        study.conclude(records)
    assert "training diverged" in str(failure.value)

    assert [line.split()[2] for line in study.console if line.startswith("trial ")] == ["errored", "errored"]
    assert any(line.startswith("\ntop trials") for line in study.console)
    runs = study.trial_runs()
    assert len(runs) == 2
    for run in runs.values():
        assert run.info.status == "FAILED" and run.data.tags["trial_state"] == "errored"
        assert "training diverged" in run.data.tags["error"]
    parent = study.parent_run()
    assert parent.info.status == "FAILED" and parent.data.tags["study_state"] == "failed"
    lines = parent.data.tags[NOTE_TAG].splitlines()
    assert lines[0] == f"**Study `{EXPERIMENT}` on synthetic: failed**"
    assert lines[2].startswith("- **Failed:** StudyFailed: every trial failed; the first error: ")
    assert lines[2].endswith("FloatingPointError: training diverged at epoch 1: loss=nan (try a lower --lr)")
    assert lines[3] == "- **Trials:** 2 (0 completed, 0 stopped_early, 2 errored, 0 interrupted)"


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_a_hard_killed_study_resumed_makes_mlflow_agree_with_tunes_record(tmp_path, mlflow_uri, synthetic_root):
    """The first driver is killed (SIGKILL): its writer had sent only part of what happened, and one trial started
    after Tune's last snapshot. The resumed driver's end makes MLflow agree with Tune (`callback.reconcile`)."""
    records = COMPLETED["records"]
    first = Study(tmp_path, mlflow_uri, synthetic_root, records, refit=False)
    lagging = next(r for r in records[1:] if r.epochs == 4)
    ghost = TrialRecord("ghost001", {"lr": 1e-3}, [dict(records[0].results[0], trial_id="ghost001")], None,
                        "9_lr=0.0010")
    first.trials[ghost.trial_id] = ReplayTrial(ghost)
    first.run(records[0].trial_id)
    first.start(lagging.trial_id, epochs=2)  # Tune finished it; the writer never sent epochs 3, 4, the end
    first.start(ghost.trial_id)  # started after Tune's last snapshot: the resumed study does not know it
    assert first.parent.writer.flush(60)
    first.parent.close(0)  # killed: nothing more is sent
    assert len(first.trial_runs()) == 3

    tuner_file = Path(first.opts.storage_path) / EXPERIMENT / "tuner.pkl"
    tuner_file.parent.mkdir(parents=True, exist_ok=True)
    tuner_file.write_bytes(b"")  # what --resume looks for (options.check_storage)
    resumed = Study(tmp_path, mlflow_uri, synthetic_root, records, refit=False, resume=True)
    assert resumed.parent.run_id == first.parent.run_id  # found again by its storage path
    with resumed.counter:
        for record in records[1:]:
            if record.trial_id != lagging.trial_id:
                resumed.run(record.trial_id)  # the resumed Tune runs the trials it had not finished
    outcome = resumed.conclude(records)

    assert outcome.state == "completed"
    runs = resumed.trial_runs()
    assert set(runs) == {r.trial_id for r in records}  # the ghost's run is gone; one run per trial
    states = {t.trial_id: t.state for t in outcome.trials}
    for record in records:
        run = runs[record.trial_id]
        assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == states[record.trial_id]
        assert resumed.steps(run) == list(range(1, record.epochs + 1))  # missing epochs logged, none twice
    assert runs[lagging.trial_id].data.tags["trial_state"] == "completed"
    assert runs[lagging.trial_id].data.tags["epochs_trained"] == "4"
    parent = resumed.parent_run()
    assert parent.info.status == "FINISHED" and parent.data.tags[NOTE_TAG] == study_description(outcome)


@pytest.fixture(scope="module")
def completed_study(tmp_path_factory, mlflow_uri, synthetic_root):
    """The recorded 10-trial study with its refits, ended once for the tests below that only read what it left."""
    tmp_path = tmp_path_factory.mktemp("completed")
    records = COMPLETED["records"]
    study = Study(tmp_path, mlflow_uri, synthetic_root, records)
    journal = Path(study.opts.storage_path) / EXPERIMENT / "optuna_study.journal"
    journal.parent.mkdir(parents=True)
    journal.write_bytes((DATA / "optuna_study.journal").read_bytes())
    store_recorded_refits(study, records, COMPLETED["refits"])
    with study.counter:
        for record in records:
            study.run(record.trial_id)
    return study, study.conclude(records)


def read_csv(study: Study, run_id: str, path: str) -> list[dict]:
    import csv

    local = study.client().download_artifacts(run_id, path, str(study.folder / run_id))
    with open(local, newline="") as f:
        return list(csv.DictReader(f))


def test_a_completed_study_gives_ausuc_with_intervals_and_the_paired_difference(completed_study):
    from msdn.study.stats import paired_difference, t_interval

    study, outcome = completed_study
    refits, metrics = outcome.refits, study.parent_run().data.metrics
    assert 0.0 < outcome.best.best["AUSUC"] < 1.0 and metrics["best_AUSUC"] == pytest.approx(outcome.best.best["AUSUC"])
    for prefix, results in (("test", refits.tuned), ("baseline_test", refits.baseline)):
        interval = t_interval([r.metrics["AUSUC"] for r in results])
        assert [metrics[f"{prefix}_AUSUC_{s}"] for s in ("mean", "std", "ci_low", "ci_high")] == pytest.approx(
            [interval.mean, interval.sd, interval.low, interval.high])
    assert metrics["test_AUSUC"] == pytest.approx(metrics["test_AUSUC_mean"])
    by_seed = {r.seed: r.metrics["AUSUC"] for r in refits.baseline}
    delta = paired_difference([r.metrics["AUSUC"] for r in refits.tuned], [by_seed[r.seed] for r in refits.tuned])
    assert [metrics[f"delta_AUSUC_{s}"] for s in ("mean", "std", "ci_low", "ci_high")] == pytest.approx(
        [delta.mean, delta.sd, delta.low, delta.high])
    # the refit table: a row of AUSUC (in %) for both configurations, and the paired difference under that of H
    table = "\n".join(study.console)
    (row,) = [line for line in study.console if line.startswith("  AUSUC ")]
    assert f"{100 * metrics['test_AUSUC_mean']:.2f} ± " in row and f"{100 * metrics['baseline_test_AUSUC_mean']:.2f} ± " in row
    assert f"delta AUSUC (tuned - authors', paired by seed): {100 * delta.mean:+.2f} points" in table
    assert table.index("delta H (tuned") < table.index("delta AUSUC (tuned")
    summary = outcome.refits.to_dict()
    assert summary["delta_AUSUC"]["mean"] == pytest.approx(delta.mean) and "AUSUC" in summary["tuned_stats"]


def test_a_completed_study_logs_the_seen_unseen_curves_and_the_per_class_tables(completed_study):
    study, outcome = completed_study
    parent = study.parent_run()
    plots = {a.path for a in study.client().list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/seen_unseen_curve_best_trial.png", "plots/seen_unseen_curve_refits_test.png",
            "plots/per_class_difference.png"} <= plots
    # each refit run: its per-class test accuracies, whose means over the seen and the unseen classes are its S and U
    names = {}
    for run in study.refit_runs():
        rows = read_csv(study, run.info.run_id, "per_class_accuracy.csv")
        assert list(rows[0]) == ["class_id", "class", "group", "images", "accuracy"]
        for group, figure in (("seen", "S"), ("unseen", "U")):
            accuracies = [float(r["accuracy"]) for r in rows if r["group"] == group]
            assert sum(accuracies) / len(accuracies) == pytest.approx(run.data.metrics[figure], abs=1e-5)
        assert all(int(r["images"]) > 0 for r in rows)
        names.update({int(r["class_id"]): r["class"] for r in rows})
    assert names[0] == "001.synthetic_class_00"  # the benchmark's class names (allclasses_names)
    # the parent: every class's mean over seeds for both configurations, their difference, largest gain first
    rows = read_csv(study, parent.info.run_id, "per_class/per_class_difference.csv")
    assert len(rows) == len(names) and {int(r["class_id"]) for r in rows} == set(names)
    differences = [float(r["difference"]) for r in rows]
    assert differences == sorted(differences, reverse=True) and differences[0] > 0 > differences[-1]
    for r in rows:
        assert float(r["difference"]) == pytest.approx(float(r["tuned"]) - float(r["authors"]), abs=2e-6)
    tuned_s = sum(r.metrics["S"] for r in outcome.refits.tuned) / len(outcome.refits.tuned)
    seen = [float(r["tuned"]) for r in rows if r["group"] == "seen"]
    assert sum(seen) / len(seen) == pytest.approx(tuned_s, abs=1e-5)  # the mean over seeds of each seed's S


def test_every_metric_key_a_study_logs_is_defined_in_docs_mlflow_md(completed_study):
    from metric_docs import undocumented

    study, _ = completed_study
    keys = {"trial": set(), "refit": set(), "parent": set(study.parent_run().data.metrics)}
    for run in study.trial_runs().values():
        keys["trial"] |= set(run.data.metrics)
    for run in study.refit_runs():
        keys["refit"] |= set(run.data.metrics)
    assert {"AUSUC", "H", "loss", "time_to_driver"} <= keys["trial"] and "AUSUC" in keys["refit"]
    assert {"test_AUSUC_ci_high", "delta_AUSUC_mean", "importance.lr"} <= keys["parent"]
    assert {kind: undocumented(names, kind) for kind, names in keys.items()} == {"trial": [], "refit": [],
                                                                                 "parent": []}
