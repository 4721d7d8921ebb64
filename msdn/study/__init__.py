"""The study wiring: the only part of msdn that knows Ray Tune, Optuna and MLflow exist.

    search_space.py  the YAML search space files: parser and validation
    eval_grid.py     their eval_grid section: the alpha x gamma values every evaluation scores
    options.py       StudyRequest (the flags, one field each) -> resolve_options -> StudyOptions; StudyError
    started.py       study_request.json: what a study was started with; what --resume may change is checked
    lock.py          the study's lock: one process per study, a second start refused before it writes
    cluster.py       Ray: connecting, trial resources, per-node storage and data checks
    trainable.py     one trial: a Trainer driven epoch by epoch, reporting to Tune
    system_metrics.py  CPU, memory and GPU figures sampled in a trial's or refit's own process (MLflow's names)
    runner.py        run_study: the study from start to end (options, Ray, the parent run, build_tuner, fit)
    conclude.py      the end of a study after Tuner.fit, however it ends: the outcome, refits, report, MLflow
    outcome.py       StudyOutcome: how a study ended and what it found, which the console, MLflow and files render
    ray_private.py   every use of a private Ray/Tune name, each with why and the Ray it was checked against
    searcher.py      the Optuna side: StudySearcher (TPE settings, PRUNED trials), its journal, reading it back
    warm_start.py    --warm-start: an earlier study's trials as evidence, or its best configurations first
    refit.py         the refits: tuned and authors' configuration, N seeds, on trainval, tested once; best_config.yaml
    stats.py         mean, sd, t intervals (paired by seed) of the refits' test figures
    results.py       TrialRecord, TrialSummary, RefitResult, Refits; the trial-state rule (TrialEnds); the best trial
    report.py        the printed header, top-trials table and end lines; the summary file
    plots.py         the parent run's PNG plots
    tracking/        MLflow: the store, the per-trial callback, the parent run

Submodules are imported explicitly, so importing this package stays cheap for Ray workers.
"""
