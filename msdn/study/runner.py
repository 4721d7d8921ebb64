"""The study: Optuna proposes, ASHA stops, Ray runs the trials, MLflow records, the best is refit.

`run_study(StudyOptions(...))` is the whole product's main path; `tune/run.py` only parses flags.
Order of work: validate every input (`options`) -> prepare the feature cache -> start or join Ray
and check every node (`cluster`) -> MLflow parent run (`tracking.parent`) -> `Tuner.fit` (or
`Tuner.restore`) -> top-trials table (`report`) -> best_config.yaml -> refits on trainval, N seeds of
the tuned and the authors' configuration, each tested once (`refit`, validation protocol) -> the
refits' table, plots and summary on the parent run. While the trials run, the console shows their
progress (`console`); Ray, Tune, MLflow and Optuna log to the study's log file (`logs`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from msdn.config import default_config
from msdn.progress import Progress
from msdn.study import tracking
from msdn.study.checkpoints import fill_deleted_checkpoint_folders
from msdn.study.cluster import check_cluster_storage_and_data, connect_ray, default_concurrency, trial_resources
from msdn.study.console import TrialCounter, is_terminal, study_display
from msdn.study.interrupt import StopRequests, forward_stop_callback
from msdn.study.logs import LOG_NAME, StatusTable, StudyLog, log_path
from msdn.study.options import StudyFailed, StudyOptions, experiment_path, is_uri, resolve_options
from msdn.study.plots import importance_plot, refit_plot, study_plots
from msdn.study.refit import RefitStore, refit_plan, run_refits, tuned_config, write_best_config
from msdn.study.report import (WIDTH, end_lines, format_table, start_lines, study_header, summary_dict, unlogged_lines,
                               wrap_lines)
from msdn.study.results import StudyResult, best_trial, trial_summaries
from msdn.study.search_space import SearchSpace
from msdn.study.searcher import (MIN_TRIALS_FOR_IMPORTANCE, StudySearcher, check_journal, journal_path,
                                  load_optuna_study, param_importances)
from msdn.study.tracking import parent
from msdn.study.tracking.writer import TrackingWriter
from msdn.study.trainable import DataSpec, train_msdn
from msdn.study.warm_start import study_facts

# Columns of Tune's progress table while trials run: result key -> header.
PROGRESS_COLUMNS = {"training_iteration": "epochs", "S": "S", "U": "U", "H": "H", "H_grid": "H@grid", "loss": "loss"}


def build_tuner(opts: StudyOptions, space: SearchSpace, resources: dict[str, float], callbacks: list,
                base: dict[str, Any]):
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
        if tuner._local_tuner is not None:  # Tune restores the pickled callbacks; this run's are live ones
            run_config = tuner._local_tuner.get_run_config()
            run_config.callbacks, run_config.progress_reporter = callbacks, status_table(opts, space)
        return tuner
    # The Optuna study in a journal next to Tune's results, named after the experiment (optuna-dashboard opens it).
    searcher = StudySearcher(starting_points=space.initial_points(opts.dataset), seed=space.sampler_seed,
                             max_epochs=opts.max_epochs, journal=journal_path(experiment_path(opts)),
                             study_name=opts.experiment, num_samples=opts.num_samples, warm_start=opts.warm_start,
                             facts=study_facts(opts.dataset, opts.data_root, space, opts.max_epochs))
    concurrency = opts.max_concurrent or default_concurrency(resources)
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


def run_study(opts: StudyOptions, *, progress: Progress = print) -> StudyResult:
    """Run (or resume) a study end to end; see the module docstring for the order of work.

    Ctrl+C / SIGTERM make it return an interrupted result (exit 130 in tune/run.py): no refit, runs
    closed as KILLED. A KeyboardInterrupt escapes only when the stop came before anything was stored.
    The console shows the study's own lines; Ray, Tune, MLflow and Optuna log to the study's log file
    (`msdn.study.logs`), and with opts.verbose to the console too.
    """
    live = progress is print and not opts.verbose and is_terminal()  # the live display needs a real terminal
    with StudyLog(opts.verbose) as log:
        progress = log.echo(progress)
        stop = StopRequests(progress).install()
        try:
            return _run(opts, stop, progress, log, live)
        finally:
            stop.uninstall()


def _run(opts: StudyOptions, stop: StopRequests, progress: Progress, log: StudyLog, live: bool) -> StudyResult:
    from msdn.data import load_benchmark

    show = progress or (lambda _message: None)
    opts, space = resolve_options(opts)
    log.open(log_path(opts))
    for line in study_header(opts, space, str(log.path)):
        show(line)
    load_benchmark(opts.dataset, opts.data_root, progress=progress)  # builds the shared feature cache once, here

    # Worker output reaches the log file through the driver; a Ray client (ray://) would print it instead.
    client = (opts.address or "").startswith("ray://")
    session = connect_ray(opts.address, log_to_driver=opts.verbose or not client)
    log.capture_worker_output(session, remote=bool(opts.address), alert=progress)
    stop.install()  # again: ray.init replaced the SIGTERM handler with one that exits at once
    check_cluster_storage_and_data(opts, progress)
    resources = trial_resources(opts)
    experiment_id, parent_run_id = parent.open_parent_run(opts, space)
    concurrency = opts.max_concurrent or default_concurrency(resources)
    for line in start_lines(opts, resources, concurrency, experiment_id, parent_run_id):
        show(line)

    result = StudyResult(experiment_path(opts), opts.mlflow_uri, experiment_id, parent_run_id)
    writer = TrackingWriter(opts.mlflow_uri, progress=progress)
    files = Path(tempfile.mkdtemp(prefix="msdn-study-"))  # plots and summary, kept until the writer has logged them
    base = default_config(opts.dataset, **space.fixed).replace(
        protocol=opts.protocol, data_root=opts.data_root, epochs=opts.max_epochs, device=opts.device,
    ).to_dict()
    callback = tracking.MLflowStudyCallback(writer, experiment_id, parent_run_id, opts.max_epochs,
                                            tags=parent.trial_tags(opts), stop=stop)
    try:
        counter = TrialCounter(study_display(progress, space.metric, live=live, verbose=opts.verbose),
                               total=opts.num_samples, max_epochs=opts.max_epochs, metric=space.metric,
                               mode=space.mode, key_params=space.param_names, stop=stop)
        tuner = build_tuner(opts, space, resources, [callback, forward_stop_callback(stop), counter], base)
        with stop.tuning(), counter:
            grid = tuner.fit()
        result.trials = trial_summaries(grid, space.metric, space.mode, opts.max_epochs)
        result.errors = [t.error for t in result.trials if t.error]
        if stop.requested:
            raise KeyboardInterrupt(stop.signal_name)
        callback.reconcile(grid)
        callback.close_open_runs("KILLED")
        _finish(opts, space, base, resources, result, writer, files, progress)
    except KeyboardInterrupt:
        result.interrupted = True
        callback.close_open_runs("KILLED")
        parent.end_parent_run(writer, parent_run_id, "KILLED", study_state="interrupted")
        show(f"study interrupted ({stop.signal_name or 'KeyboardInterrupt'}): no test result reported; its MLflow "
             f"runs are closed as KILLED.\n  Continue it with the same command plus --resume")
    except BaseException as exc:
        # Never leave runs RUNNING; a study that failed before any trial ran leaves nothing that blocks a retry.
        callback.close_open_runs("FAILED")
        parent.end_parent_run(writer, parent_run_id, "FAILED", study_state="failed")
        if not opts.resume and remove_unstarted_experiment(opts):
            show(f"the study failed before any trial ran ({type(exc).__name__}); removed Tune's files from "
                 f"{experiment_path(opts)} (its log stays), so the same command can run again")
        raise
    finally:
        parent.log_description(writer, result, opts, space)  # the parent run's summary, however the study ended
        result.unlogged = writer.close(opts.tracking_timeout)
        result.dropped = list(writer.dropped)
        shutil.rmtree(files, ignore_errors=True)
        for line in unlogged_lines(result, writer.last_error):
            show(line)
    return result


def _finish(opts: StudyOptions, space: SearchSpace, base: dict[str, Any], resources: dict[str, float],
            result: StudyResult, writer: TrackingWriter, files: Path, progress: Progress) -> None:
    """After the trials: the table, the best trial, best_config.yaml, the refits (validation protocol), plots and
    summary."""
    show = progress or (lambda _message: None)
    best = best_trial(result.trials, space.metric, space.mode)
    show("\ntop trials (best epoch of each, accuracies in %):\n" + format_table(result.trials, space, width=WIDTH))
    if best is None:
        first = result.errors[0] if result.errors else "no trial reported a result"
        raise StudyFailed(f"every trial failed; the first error:\n{first}")
    result.best = best
    parent.log_best(writer, result.parent_run_id, best)
    plots = study_plots(files, result.trials, best, metric=space.metric, mode=space.mode, dataset=opts.dataset,
                        experiment=opts.experiment, protocol=opts.protocol)
    plots.extend(_importances(opts, space, result, writer, files, show))
    specs = refit_plan(opts, base, space.fixed, best) if opts.refit and opts.protocol == "val" else []
    checkpoints = {}
    if specs:
        store, tags = RefitStore.of(opts), parent.trial_tags(opts)
        result.refits = run_refits(opts, specs, resources, store, progress=progress, on_result=lambda refit: (
            parent.log_refit_run(writer, result.experiment_id, result.parent_run_id, refit, tags)))
        parent.log_refits(writer, result.parent_run_id, result.refits)
        checkpoints = {r.name: store.local_checkpoint(r, files) for r in result.refits.tuned + result.refits.baseline}
        plots.append(refit_plot(files, result.refit, opts.dataset))
    exported = specs[0].train_config if specs else tuned_config(base, best, int(best.best.get("trial_seed", opts.seed)))
    result.best_config_path, best_config = write_best_config(opts, exported, files, result.refit)
    parent.log_refit_files(writer, result.parent_run_id, best_config, checkpoints)
    parent.log_files(writer, result.parent_run_id, plots, summary_dict(result), files)
    parent.end_parent_run(writer, result.parent_run_id, "FINISHED", study_state="completed")
    for line in end_lines(result, opts, space):
        show(line)


def _importances(opts: StudyOptions, space: SearchSpace, result: StudyResult, writer: TrackingWriter, files: Path,
                 show: Callable[[str], None]) -> list[Path]:
    """The searched parameters' importances in the persisted Optuna study: `importance.<param>` metrics and a bar
    plot for the parent run (none when too few trials completed); their plot is returned."""
    journal = journal_path(result.experiment_path)
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
    parent.log_importances(writer, result.parent_run_id, importances)
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
