"""The study wiring: the only part of msdn that knows Ray Tune, Optuna and MLflow exist.

    search_space.py  the YAML search space files: parser and validation
    eval_grid.py     their eval_grid section: the alpha x gamma values every evaluation scores
    options.py       StudyRequest (the flags, one field each) -> resolve_options -> StudyOptions; StudyError
    cluster.py       Ray: connecting, trial resources, per-node storage and data checks
    trainable.py     one trial: a Trainer driven epoch by epoch, reporting to Tune
    runner.py        run_study: the study from start to end (build_tuner, fit, refit, report)
    searcher.py      the Optuna side: StudySearcher (TPE settings, PRUNED trials), its journal, reading it back
    warm_start.py    --warm-start: an earlier study's trials as evidence, or its best configurations first
    refit.py         the refits: tuned and authors' configuration, N seeds, on trainval, tested once; best_config.yaml
    stats.py         mean, sd, t intervals (paired by seed) of the refits' test figures
    results.py       TrialSummary, RefitResult, Refits, StudyResult; the trial-state rule; the best trial
    report.py        the printed header, top-trials table and end lines; the summary file
    plots.py         the parent run's PNG plots
    tracking/        MLflow: the store, the per-trial callback, the parent run

Submodules are imported explicitly, so importing this package stays cheap for Ray workers.
"""
