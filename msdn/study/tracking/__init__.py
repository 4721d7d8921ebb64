"""MLflow bookkeeping of a study: one experiment per study, a parent run, one child run per trial.

    store.py     the tracking URI check, the client, batched logging helpers, the tags
    callback.py  MLflowStudyCallback: the Tune callback that logs each trial into its child run
    parent.py    ParentRun, the study's parent run (its ids and writer): settings, best trial, refits, plots,
                 summary, and its description rendered from the study's outcome
    registry.py  each refit's logged model (msdn.mlflow_model's pyfunc) and the Model Registry's best/authors
    lineage.py   the datasets each trial and refit read (MLflow dataset inputs), digests computed once per study
    names.py     run names that read at a glance (`t07 lr=3.1e-4 λdis=2.0e-3 λcal=0.12`, `refit tuned seed=3`)
    writer.py    TrackingWriter: the queue and thread that does all the logging, retrying through outages

Everything is logged from the Ray driver, so trials never talk to MLflow. `parent` is imported
by its full name (`msdn.study.tracking.parent`): it depends on the study's options, which check
the tracking URI with this package.
"""
from msdn.study.tracking.callback import SKIPPED_RESULT_KEYS, MLflowStudyCallback, scalar_metrics
from msdn.study.tracking.store import (PARENT_TAG, STORAGE_TAG, STUDY_TAG, TRIAL_ID_TAG, TRIAL_STATE_TAG, TrackingError,
                                       check_tracking_uri, child_runs, client, default_tracking_uri, ensure_experiment,
                                       log_artifacts, log_metrics, log_params_flat)

__all__ = [
    "MLflowStudyCallback", "PARENT_TAG", "SKIPPED_RESULT_KEYS", "STORAGE_TAG", "STUDY_TAG", "TRIAL_ID_TAG",
    "TRIAL_STATE_TAG", "TrackingError", "check_tracking_uri", "child_runs", "client", "default_tracking_uri",
    "ensure_experiment", "log_artifacts", "log_metrics", "log_params_flat", "scalar_metrics",
]
