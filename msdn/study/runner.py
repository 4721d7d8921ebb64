"""The study: Optuna proposes, ASHA stops, Ray runs the trials, MLflow records, the best is refit.

`run_study(StudyOptions(...))` is the whole product's main path; `tune/run.py` only parses flags.
Order of work: validate every input (`options`) -> prepare the feature cache -> start or join Ray
and check every node (`cluster`) -> MLflow parent run (`tracking.parent`) -> `Tuner.fit` (or
`Tuner.restore`) -> top-trials table (`report`) -> refit on trainval and test once (`refit`,
validation protocol) -> plots and summary on the parent run.
"""
from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from msdn.config import default_config
from msdn.progress import Progress
from msdn.study import tracking
from msdn.study.cluster import check_cluster_storage_and_data, connect_ray, default_concurrency, trial_resources
from msdn.study.options import StudyFailed, StudyOptions, experiment_path, resolve_options
from msdn.study.plots import refit_plot, study_plots
from msdn.study.refit import refit_best
from msdn.study.report import end_lines, format_table, study_header, summary_dict
from msdn.study.results import StudyResult, best_trial, trial_summaries
from msdn.study.search_space import SearchSpace
from msdn.study.tracking import parent
from msdn.study.trainable import DataSpec, train_msdn

# Columns of Tune's progress table while trials run: result key -> header.
PROGRESS_COLUMNS = {"training_iteration": "epochs", "S": "S", "U": "U", "H": "H", "H_best_gamma": "H@best-gamma",
                    "loss": "loss"}


def build_tuner(opts: StudyOptions, space: SearchSpace, resources: dict[str, float], callback, base: dict[str, Any]):
    """A new Tuner (OptunaSearch + ASHA + the MLflow callback), or with --resume the stored one restored."""
    # Tune's default output dumps every result in full; a compact table of what matters reads better.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpoints every epoch force frequent experiment snapshots by design (resume needs them).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_resources(
        tune.with_parameters(train_msdn, data=DataSpec(opts.dataset, opts.data_root), base=base, study_seed=opts.seed),
        resources,
    )
    if opts.resume:
        return tune.Tuner.restore(experiment_path(opts), trainable, resume_unfinished=True, resume_errored=True)
    searcher = OptunaSearch(points_to_evaluate=space.initial_points(opts.dataset) or None, seed=space.sampler_seed)
    concurrency = opts.max_concurrent or default_concurrency(resources)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=opts.max_epochs,
                              grace_period=space.asha.grace_period, reduction_factor=space.asha.reduction_factor)
    reporter = tune.CLIReporter(metric_columns=PROGRESS_COLUMNS, parameter_columns=list(space.param_names),
                                max_report_frequency=20, sort_by_metric=True)
    return tune.Tuner(
        trainable,
        param_space=space.tune_param_space(),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            scheduler=scheduler, num_samples=opts.num_samples,
        ),
        run_config=tune.RunConfig(
            name=opts.experiment, storage_path=opts.storage_path, callbacks=[callback],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            progress_reporter=reporter, verbose=1,
        ),
    )


def _install_sigterm_as_interrupt() -> None:
    """SIGTERM (e.g. `kill`, a job scheduler) stops the study like Ctrl+C: state saved, runs closed."""
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def run_study(opts: StudyOptions, *, progress: Progress = print) -> StudyResult:
    """Run (or resume) a study end to end; see the module docstring for the order of work."""
    from msdn.data import load_benchmark

    show = progress or (lambda _message: None)
    opts, space = resolve_options(opts)
    for line in study_header(opts, space):
        show(line)
    load_benchmark(opts.dataset, opts.data_root, progress=progress)  # builds the shared feature cache once, here

    connect_ray(opts.address)
    check_cluster_storage_and_data(opts, progress)
    resources = trial_resources(opts)
    experiment_id, parent_run_id = parent.open_parent_run(opts, space)
    show(f"MLflow: {opts.mlflow_uri} experiment {opts.experiment!r} (id {experiment_id}), parent run {parent_run_id}")

    base = default_config(opts.dataset, **space.fixed).replace(
        protocol=opts.protocol, data_root=opts.data_root, epochs=opts.max_epochs, device=opts.device,
    ).to_dict()
    callback = tracking.MLflowStudyCallback(opts.mlflow_uri, experiment_id, parent_run_id, opts.max_epochs,
                                            tags=parent.trial_tags(opts))
    tuner = build_tuner(opts, space, resources, callback, base)
    _install_sigterm_as_interrupt()
    try:
        grid = tuner.fit()
    except BaseException:
        # Never leave runs RUNNING: a crashed driver's study is resumable, its runs are closed.
        callback.close_open_runs("FAILED")
        parent.end_parent_run(opts.mlflow_uri, parent_run_id, "FAILED")
        raise

    result = StudyResult(experiment_path(opts), opts.mlflow_uri, experiment_id, parent_run_id)
    result.trials = trial_summaries(grid, space.metric, space.mode, opts.max_epochs)
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    result.interrupted = unfinished > 0
    result.errors = [t.error for t in result.trials if t.error]

    if result.interrupted:
        closed = callback.close_open_runs("KILLED")
        parent.end_parent_run(opts.mlflow_uri, parent_run_id, "KILLED", study_state="interrupted")
        show(f"study interrupted with {unfinished} unfinished trials ({closed} MLflow runs closed as KILLED); "
             f"continue it with the same command plus --resume")
        return result

    callback.close_open_runs("KILLED")
    best = best_trial(result.trials, space.metric, space.mode)
    show("\ntop trials (best epoch of each, accuracies in %):\n" + format_table(result.trials, space))
    if best is None:
        parent.end_parent_run(opts.mlflow_uri, parent_run_id, "FAILED", study_state="failed")
        first = result.errors[0] if result.errors else "no trial reported a result"
        raise StudyFailed(f"every trial failed; the first error:\n{first}")
    result.best = best
    parent.log_best(opts.mlflow_uri, parent_run_id, best)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plots = study_plots(folder, result.trials, best, metric=space.metric, mode=space.mode, dataset=opts.dataset,
                            experiment=opts.experiment, protocol=opts.protocol)
        if opts.refit and opts.protocol == "val":
            result.refit = refit_best(opts, base, best, resources, progress)
            parent.log_refit(opts.mlflow_uri, parent_run_id, result.refit)
            plots.append(refit_plot(folder, result.refit, opts.dataset))
        parent.log_files(opts.mlflow_uri, parent_run_id, plots, summary_dict(result), folder)
    parent.end_parent_run(opts.mlflow_uri, parent_run_id, "FINISHED", study_state="completed")
    for line in end_lines(result, opts, space):
        show(line)
    return result
