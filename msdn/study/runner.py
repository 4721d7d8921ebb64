"""The study: Optuna proposes, ASHA stops, Ray runs the trials, MLflow records, the best is refit.

`run_study(StudyRequest(...))` is the whole product's main path; `tune/run.py` only parses flags.
Order of work: validate every input (`options`) -> take the study's lock (`lock`: a second start is refused)
-> with --resume, refuse options that would change what the study means (`started`) -> prepare the feature
cache -> start or join Ray and check every node (`cluster`) -> MLflow parent run (`tracking.parent.ParentRun`)
-> `Tuner.fit` (or `Tuner.restore`) -> then `conclude`: top-trials table (`report`) -> best_config.yaml -> refits on
trainval, N seeds of the tuned and the authors' configuration, each tested once (`refit`, validation
protocol) -> the refits' table, plots and summary on the parent run; the study's `outcome` rendered on
the console, in the parent run's description and in study_summary.json. While the trials run, the
console shows their progress (`console`); Ray, Tune, MLflow and Optuna log to the study's log file (`logs`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from msdn.progress import Progress
from msdn.study import ray_private, tracking
from msdn.study.checkpoints import fill_deleted_checkpoint_folders
from msdn.study.cluster import (check_cluster_storage_and_data, cluster_tags, connect_ray, default_concurrency,
                                trial_resources)
from msdn.study.conclude import StudyEnd, base_config, conclude
from msdn.study.console import TrialCounter, is_terminal, study_display
from msdn.study.diskspace import disk_guard
from msdn.study.interrupt import StopRequests, forward_stop_callback
from msdn.study.lock import study_lock
from msdn.study.logs import StatusTable, StudyLog, log_path
from msdn.study.options import StudyOptions, StudyRequest, check_storage, experiment_path, resolve_options
from msdn.study.outcome import StudyOutcome
from msdn.study.report import start_lines, study_header
from msdn.study.results import TrialEnds, TrialRecord, trial_records
from msdn.study.search_space import SearchSpace
from msdn.study.searcher import StudySearcher, check_journal, journal_path
from msdn.study.started import StartRecord, check_resume, write_record
from msdn.study.tracking.parent import ParentRun, trial_tags
from msdn.study.trainable import DataSpec, train_msdn
from msdn.study.warm_start import study_facts

# Columns of Tune's progress table while trials run: result key -> header.
PROGRESS_COLUMNS = {"training_iteration": "epochs", "S": "S", "U": "U", "H": "H", "H_grid": "H@grid", "loss": "loss"}


def build_tuner(opts: StudyOptions, space: SearchSpace, resources: dict[str, float], concurrency: int,
                callbacks: list, base: dict[str, Any]):
    """A new Tuner (OptunaSearch + ASHA + the MLflow callback), or with --resume the stored one restored."""
    # Tune's older output engine: its status table goes through our reporter (to the log file, or with -v the
    # console too); the newer engine prints every result in full on the console.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpoints every epoch force frequent experiment snapshots by design (resume needs them).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from msdn.study.timing import ResultTimer

    # Tune's own result files (progress.csv, result.json) but not its TensorBoard logger: that one fsyncs
    # on the driver for every result (about 20 ms each, measured by benchmarks/bench_study.py), and MLflow
    # already records every metric. ResultTimer goes first, so the callbacks after it see its timings.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    callbacks = [ResultTimer(), *callbacks, CSVLoggerCallback(), JsonLoggerCallback()]
    trainable = tune.with_resources(
        tune.with_parameters(train_msdn, data=DataSpec(opts.dataset, opts.data_root), base=base, study_seed=opts.seed,
                             checkpoint_every=opts.checkpoint_every, eval_grid=space.eval_grid(), metric=space.metric,
                             mode=space.mode),
        resources,
    )
    if opts.resume:
        journal = journal_path(experiment_path(opts))
        if journal is not None:
            check_journal(journal, resume=True)  # before Tune sets the restored searcher up (it would make one)
        fill_deleted_checkpoint_folders(experiment_path(opts))  # Tune's record may name them (study.checkpoints)
        tuner = tune.Tuner.restore(experiment_path(opts), trainable, resume_unfinished=True, resume_errored=True)
        run_config = ray_private.restored_run_config(tuner)
        if run_config is not None:  # Tune restores the pickled callbacks; this run's are live ones
            run_config.callbacks, run_config.progress_reporter = callbacks, status_table(opts, space)
            run_config.failure_config = tune.FailureConfig(max_failures=opts.max_failures)  # may change on --resume
        return tuner
    # The Optuna study in a journal next to Tune's results, named after the experiment (optuna-dashboard opens it).
    searcher = StudySearcher(starting_points=space.initial_points(opts.dataset), seed=space.sampler_seed,
                             max_epochs=opts.max_epochs, journal=journal_path(experiment_path(opts)),
                             study_name=opts.experiment, num_samples=opts.num_samples, warm_start=opts.warm_start,
                             facts=study_facts(opts.dataset, opts.data_root, space, opts.max_epochs))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=opts.max_epochs,
                              grace_period=space.asha.grace_period, reduction_factor=space.asha.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=space.tune_param_space(),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            scheduler=scheduler, num_samples=opts.num_samples,
            # A reused worker skips the process start and keeps the opened data (trainable.WorkerCache).
            reuse_actors=opts.reuse_workers,
        ),
        run_config=tune.RunConfig(
            name=opts.experiment, storage_path=opts.storage_path, callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            progress_reporter=status_table(opts, space), verbose=1,
        ),
    )


def status_table(opts: StudyOptions, space: SearchSpace) -> StatusTable:
    """Tune's status table of the running trials: in the study's log file, and with -v on the console."""
    return StatusTable(metric_columns=PROGRESS_COLUMNS, parameter_columns=list(space.param_names),
                       max_report_frequency=20, sort_by_metric=True, verbose=opts.verbose)


def run_study(request: StudyRequest, *, progress: Progress = print) -> StudyOutcome:
    """Run (or resume) a study end to end; see the module docstring for the order of work.

    Ctrl+C / SIGTERM make it return an interrupted outcome (exit 130 in tune/run.py): no refit, runs
    closed as KILLED. A KeyboardInterrupt escapes only when the stop came before anything was stored.
    The console shows the study's own lines; Ray, Tune, MLflow and Optuna log to the study's log file
    (`msdn.study.logs`), and with request.verbose to the console too.
    """
    live = progress is print and not request.verbose and is_terminal()  # the live display needs a real terminal
    with StudyLog(request.verbose) as log:
        progress = log.echo(progress)
        stop = StopRequests(progress).install()
        try:
            return _run(request, stop, progress, log, live)
        finally:
            stop.uninstall()


def _run(request: StudyRequest, stop: StopRequests, progress: Progress, log: StudyLog, live: bool) -> StudyOutcome:
    opts, space = resolve_options(request)  # refuses a second start of a running study too (its lock is held)
    started = check_resume(opts)  # --resume: options it keeps must not change (None: a new or unrecorded study)
    with study_lock(opts):  # two starts that passed the checks together: the second ends here, having written nothing
        return _run_locked(opts, space, started, stop, progress, log, live)


def _run_locked(opts: StudyOptions, space: SearchSpace, started: StartRecord | None, stop: StopRequests,
                progress: Progress, log: StudyLog, live: bool) -> StudyOutcome:
    study = prepare_study(opts, space, started, stop, progress, log, live)
    return conclude(study.end, study.fit)


@dataclass
class PreparedStudy:
    """A study up to its trials: Ray joined and checked, the parent run open; `fit` runs the trials, and
    `conclude(end, fit)` everything after (msdn.study.multirun runs the next study's trials meanwhile)."""

    end: StudyEnd
    fit: Callable[[], list[TrialRecord]]


def prepare_study(opts: StudyOptions, space: SearchSpace, started: StartRecord | None, stop: StopRequests,
                  progress: Progress, log: StudyLog, live: bool) -> PreparedStudy:
    """Everything of a study before its trials (the caller holds the study's lock); see the module docstring."""
    from msdn.data import load_benchmark

    show = progress or (lambda _message: None)
    check_storage(opts, locked=True)  # again, under the lock: a study that started or ended meanwhile
    log.open(log_path(opts))
    for line in study_header(opts, space, str(log.path)):
        show(line)
    if opts.resume and started is None:
        show("note: this study keeps no record of the options it was started with (it began before they were "
             "recorded), so --resume cannot check them")
    load_benchmark(opts.dataset, opts.data_root, progress=progress)  # builds the shared feature cache once, here

    # Worker output reaches the log file through the driver; a Ray client (ray://) would print it instead.
    client = (opts.address or "").startswith("ray://")
    session = connect_ray(opts.address, log_to_driver=opts.verbose or not client)
    log.capture_worker_output(session, remote=bool(opts.address), alert=progress)
    stop.install()  # again: ray.init replaced the SIGTERM handler with one that exits at once
    resources = trial_resources(opts, progress)  # refuses a trial no node can ever hold, before any other work
    check_cluster_storage_and_data(opts, progress)
    concurrency = started.concurrency if started else opts.max_concurrent or default_concurrency(resources)
    if not opts.resume:
        write_record(opts, concurrency)  # what --resume compares with (msdn.study.started)
    parent = ParentRun.open(opts, space, cluster=cluster_tags(), progress=progress)
    for line in start_lines(opts, resources, concurrency, parent.experiment_id, parent.run_id):
        show(line)

    ends = TrialEnds(opts.max_epochs, stop)  # each trial's final state, one rule for the console and MLflow
    callback = tracking.MLflowStudyCallback(parent.writer, parent.experiment_id, parent.run_id, opts.max_epochs,
                                            tags=trial_tags(opts), ends=ends, inputs=parent.trial_inputs)

    def fit() -> list[TrialRecord]:
        counter = TrialCounter(study_display(progress, space.metric, live=live, verbose=opts.verbose),
                               total=opts.num_samples, max_epochs=opts.max_epochs, metric=space.metric,
                               mode=space.mode, key_params=space.param_names, stop=stop, ends=ends)
        callbacks = [callback, forward_stop_callback(stop), counter, disk_guard(opts)]
        tuner = build_tuner(opts, space, resources, concurrency, callbacks, base_config(opts, space))
        with stop.tuning(), counter:
            return trial_records(tuner.fit())

    return PreparedStudy(StudyEnd(opts, space, parent, callback, ends, resources, progress, str(log.path)), fit)
