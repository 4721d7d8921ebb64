"""The end of a study, however it ends: from Tune's record of the trials to the outcome and its views.

`conclude(end, fit)` runs `fit` (in a study, `Tuner.fit` turned into `TrialRecord`s; in the tests, recorded
records) and everything after it: the trials' summaries and states (`results.trial_summaries` with the
study's `TrialEnds`), MLflow made to agree with Tune (`MLflowStudyCallback.reconcile`), the top-trials
table, the best trial, the parameter importances, the refits (`refit`), best_config.yaml, the plots, the
per-class tables and the parent run's results. It fills one `StudyOutcome`, and the console's end lines, the parent run's
description and `study_summary.json` render it. How the study ended:

    completed    the trials and refits finished: the parent run FINISHED
    interrupted  a stop request (Ctrl+C, SIGTERM: KeyboardInterrupt): runs closed KILLED, no test result
    failed       any other exception (every trial failed: StudyFailed): runs closed FAILED, the exception raised

Nothing here starts Ray: the refits found in the study's storage are not run again, so a test can call
`conclude` in-process against a real MLflow store (tests/test_conclude.py).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from msdn.config import default_config
from msdn.progress import Progress
from msdn.study.diskspace import TRACKING_WAIT_S, disk_full_error
from msdn.study.logs import LOG_NAME
from msdn.study.options import StudyFailed, StudyOptions, experiment_path, is_uri
from msdn.study.outcome import FAILED, StudyOutcome
from msdn.study.per_class import DIFFERENCE_COLUMNS, class_differences, write_csv
from msdn.study.plots import class_difference_plot, importance_plot, refit_plot, refit_seen_unseen_plot, study_plots
from msdn.study.refit import RefitStore, refit_plan, run_refits, tuned_config, write_best_config
from msdn.study.report import (SUMMARY_FILE, WIDTH, end_lines, format_table, interrupted_lines, summary_dict,
                               unlogged_lines, wrap_lines)
from msdn.study.results import COMPLETED, INTERRUPTED, TrialEnds, TrialRecord, best_trial, trial_summaries
from msdn.study.search_space import SearchSpace
from msdn.study.searcher import MIN_TRIALS_FOR_IMPORTANCE, journal_path, load_optuna_study, param_importances
from msdn.study.tracking.callback import MLflowStudyCallback
from msdn.study.tracking.names import trial_number, trial_run_name
from msdn.study.tracking.parent import ParentRun, trial_tags


def base_config(opts: StudyOptions, space: SearchSpace) -> dict[str, Any]:
    """The TrainConfig every trial starts from (TrainConfig.to_dict): the dataset's recipe with the search space's
    fixed settings, the study's protocol, data, epochs and device."""
    return default_config(opts.dataset, **space.fixed).replace(
        protocol=opts.protocol, data_root=opts.data_root, epochs=opts.max_epochs, device=opts.device,
    ).to_dict()


@dataclass
class StudyEnd:
    """What the end of a study works with: its options and space, its parent run (and writer), the MLflow callback
    of its trials, the trials' final states as they ended (`ends`, which holds the stop requests)."""

    opts: StudyOptions
    space: SearchSpace
    parent: ParentRun
    callback: MLflowStudyCallback
    ends: TrialEnds
    resources: dict[str, float]  # each refit's, as a trial's
    progress: Progress = print
    log_file: str | None = None

    def show(self, line: str) -> None:
        if self.progress:
            self.progress(line)


def new_outcome(end: StudyEnd) -> StudyOutcome:
    """The outcome of a study not ended yet: what it is and where its results go."""
    opts, space = end.opts, end.space
    journal = journal_path(experiment_path(opts))
    return StudyOutcome(
        experiment=opts.experiment, dataset=opts.dataset, protocol=opts.protocol, metric=space.metric,
        mode=space.mode, param_names=tuple(space.param_names), planned_trials=opts.num_samples,
        max_epochs=opts.max_epochs, experiment_path=experiment_path(opts), tracking_uri=opts.mlflow_uri,
        experiment_id=end.parent.experiment_id, parent_run_id=end.parent.run_id, log_file=end.log_file,
        journal=str(journal) if journal is not None else None)


def conclude(end: StudyEnd, fit: Callable[[], list[TrialRecord]]) -> StudyOutcome:
    """Run `fit` (the trials), then end the study; returns its outcome (see the module docstring).

    A stop request makes an interrupted outcome (returned); any other exception a failed one (raised again,
    after the parent run and the trials' runs are closed). Every path ends the parent run with the outcome's
    description, waits for MLflow (up to --tracking-timeout) and says what it did not record.
    """
    opts, space, parent, callback, stop = end.opts, end.space, end.parent, end.callback, end.ends.stop
    outcome = new_outcome(end)
    files = Path(tempfile.mkdtemp(prefix="msdn-study-"))  # plots and summary, kept until the writer has logged them
    disk_full = None  # a DiskFullError, when the study ends on a full disk
    try:
        records = fit()
        outcome.trials = trial_summaries(records, space.metric, space.mode, opts.max_epochs, ended=end.ends.states,
                                         stopping=end.ends.stopping)
        if end.ends.stopping:
            raise KeyboardInterrupt(stop.signal_name)
        callback.reconcile(records)
        callback.close_open_runs("KILLED", {t.trial_id: t.state for t in outcome.trials})
        _finish(end, outcome, files, run_names(records))
    except KeyboardInterrupt:
        outcome.state, outcome.stop_signal = INTERRUPTED, getattr(stop, "signal_name", None)
        callback.close_open_runs("KILLED", {t.trial_id: t.state for t in outcome.trials})
        for line in interrupted_lines(outcome):
            end.show(line)
    except BaseException as exc:
        # Never leave runs RUNNING; a study that failed before any trial ran leaves nothing that blocks a retry.
        outcome.state, outcome.error = FAILED, f"{type(exc).__name__}: {exc}"
        callback.close_open_runs("FAILED", {t.trial_id: t.state for t in outcome.trials})
        disk_full = disk_full_error(opts, exc)
        if not opts.resume and remove_unstarted_experiment(opts):
            end.show(f"the study failed before any trial ran ({type(exc).__name__}); removed Tune's files from "
                     f"{experiment_path(opts)} (its log stays), so the same command can run again")
        if disk_full is not None:
            raise disk_full from None
        raise
    finally:
        parent.end(outcome)  # the study's state and description, however it ended
        write_summary(end, outcome)
        # On a full disk MLflow may never take the last lines: wait briefly, and say so, rather than for minutes.
        outcome.unlogged = parent.close(min(opts.tracking_timeout, TRACKING_WAIT_S) if disk_full else opts.tracking_timeout)
        outcome.dropped, outcome.tracking_error = list(parent.writer.dropped), parent.writer.last_error
        shutil.rmtree(files, ignore_errors=True)
        for line in unlogged_lines(outcome):
            end.show(line)
    return outcome


def write_summary(end: StudyEnd, outcome: StudyOutcome) -> None:
    """study_summary.json in the study's result folder, however the study ended (what `python -m msdn.report`
    and a multi-benchmark --resume read); not where a study that failed at start left no folder."""
    from msdn.study.refit import write_file

    folder = experiment_path(end.opts)
    if not is_uri(folder) and not Path(folder).is_dir():
        return
    try:
        write_file(f"{folder}/{SUMMARY_FILE}", json.dumps(summary_dict(outcome), indent=1, default=str).encode())
    except OSError as exc:  # the summary is also on the parent run; a full disk must not hide the study's end
        end.show(f"study_summary.json not written to {folder}: {exc}")


def run_names(records: list[TrialRecord]) -> dict[str, str]:
    """Trial id -> the name of its MLflow run: the name the MLflow callback gave it (`names.trial_run_name`)."""
    return {r.trial_id: trial_run_name(trial_number(r.experiment_tag), r.config, r.trial_id) for r in records}


def _finish(end: StudyEnd, outcome: StudyOutcome, files: Path, names: dict[str, str]) -> None:
    """After the trials: the table, the best trial, best_config.yaml, the refits (validation protocol), plots and
    summary; the outcome's state becomes COMPLETED before the summary file and the end lines render it."""
    opts, space, parent = end.opts, end.space, end.parent
    base = base_config(opts, space)
    best = best_trial(outcome.trials, space.metric, space.mode)
    end.show("\ntop trials (best epoch of each, accuracies in %):\n" + format_table(outcome.trials, space, width=WIDTH))
    if best is None:
        first = outcome.errors[0] if outcome.errors else "no trial reported a result"
        raise StudyFailed(f"every trial failed; the first error:\n{first}")
    outcome.best, outcome.best_run_name = best, names.get(best.trial_id)
    parent.log_best(best)
    plots = study_plots(files, outcome.trials, best, metric=space.metric, mode=space.mode, dataset=opts.dataset,
                        experiment=opts.experiment, protocol=opts.protocol)
    plots.extend(_importances(opts, space, outcome, parent, files, end.show))
    specs = refit_plan(opts, base, space.fixed, best) if opts.refit and opts.protocol == "val" else []
    checkpoints = {}
    if specs:
        store, tags = RefitStore.of(opts), trial_tags(opts)
        outcome.refits = run_refits(opts, specs, end.resources, store, progress=end.progress,
                                    on_result=lambda refit: parent.log_refit_run(refit, tags), stop=end.ends.stop)
        parent.log_refits(outcome.refits)
        parent.register_refits(outcome)  # the first tuned seed as msdn-<dataset>@best, the authors' as @authors
        checkpoints = {r.name: store.local_checkpoint(r, files) for r in outcome.refits.tuned + outcome.refits.baseline}
        plots.append(refit_plot(files, outcome.refit, opts.dataset))
        plots.extend(path for path in [refit_seen_unseen_plot(files, outcome.refits, opts.dataset)] if path)
        differences = class_differences(outcome.refits)
        if differences is not None:
            plots.append(class_difference_plot(files, differences, opts.dataset, len(outcome.refits.tuned)))
            parent.log_class_tables([write_csv(files / "per_class" / "per_class_difference.csv", differences,
                                               DIFFERENCE_COLUMNS)])
    exported = specs[0].train_config if specs else tuned_config(base, best, int(best.best.get("trial_seed", opts.seed)))
    outcome.best_config_path, best_config = write_best_config(opts, exported, files, outcome.refit)
    outcome.state = COMPLETED
    parent.log_refit_files(best_config, checkpoints)
    parent.log_files(plots, summary_dict(outcome), files)
    for line in end_lines(outcome):
        end.show(line)


def _importances(opts: StudyOptions, space: SearchSpace, outcome: StudyOutcome, parent: ParentRun, files: Path,
                 show: Callable[[str], None]) -> list[Path]:
    """The searched parameters' importances in the persisted Optuna study: `importance.<param>` metrics and a bar
    plot for the parent run (none when too few trials completed); their plot is returned."""
    journal = Path(outcome.journal) if outcome.journal is not None else None
    study = load_optuna_study(journal, opts.experiment) if journal is not None else None
    try:
        importances = param_importances(study, seed=space.sampler_seed) if study is not None else None
    except Exception as exc:  # a diagnostic: its failure must not fail a finished study
        show(f"parameter importances: not computed ({type(exc).__name__}: {exc})")
        return []
    if importances is None:
        show(f"parameter importances: not computed (they need {MIN_TRIALS_FOR_IMPORTANCE} or more COMPLETE trials "
             f"in the Optuna study{'' if journal is not None else ', kept on disk only under a local --storage-path'})")
        return []
    parent.log_importances(importances)
    show("\n".join(wrap_lines("parameter importances (fANOVA, COMPLETE trials): "
                              + ", ".join(f"{name} {value:.2f}" for name, value in importances.items()))))
    return [importance_plot(files, importances, opts.experiment)]


def remove_unstarted_experiment(opts: StudyOptions) -> bool:
    """Remove this run's experiment folder when no trial was started in it; True when removed.

    A study that fails at start (a crash while Tune sets up) would otherwise leave a `tuner.pkl` that
    makes the next attempt "already exist". A folder with any trial folder in it is kept (it may hold
    checkpoints worth resuming). The study's log file stays (it tells why), and with it the folder.
    Only local folders are removed from; object storage is left alone.
    """
    path = Path(experiment_path(opts))
    if is_uri(opts.storage_path) or not path.is_dir():
        return False
    if any(entry.is_dir() for entry in path.iterdir()):
        return False
    for entry in path.iterdir():
        if entry.name != LOG_NAME:
            entry.unlink(missing_ok=True)
    if not any(path.iterdir()):
        path.rmdir()
    return True
