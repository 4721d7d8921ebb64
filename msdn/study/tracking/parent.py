"""The study's parent run in MLflow: opened (or found again on --resume), then its results.

The parent run holds what describes the whole study: its settings as params, the search space file,
where and with what it ran (tags: git commit, library versions, cluster size), the best trial
(`best_*`), the refit's test figures (`test_*`), the plots and `study_summary.json`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from msdn.metrics import HEADLINE_KEYS
from msdn.study.cluster import cluster_tags
from msdn.study.options import StudyOptions, experiment_path
from msdn.study.results import RefitResult, TrialSummary
from msdn.study.search_space import SearchSpace
from msdn.study.tracking.store import (STORAGE_TAG, STUDY_TAG, client, ensure_experiment, log_artifacts, log_metrics,
                                      log_params_flat)

PROTOCOL_NOTES = {
    "paper": "paper: trains on trainval and reports TEST metrics every epoch (the authors' procedure; selection on test)",
    "val": "val: trials train on train classes and report validation metrics; the best is refit and tested once",
}


def git_commit() -> str:
    """The commit of this checkout, or "unknown" (an installed copy, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the libraries a study's numbers depend on."""
    import mlflow
    import numpy as np
    import optuna
    import ray
    import torch

    return {"torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__,
            "mlflow": mlflow.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}


def trial_tags(opts: StudyOptions) -> dict[str, str]:
    """Tags every trial's child run carries besides those the callback sets."""
    return {"dataset": opts.dataset, "protocol": opts.protocol, STUDY_TAG: "trial"}


def open_parent_run(opts: StudyOptions, space: SearchSpace) -> tuple[str, str]:
    """The study's parent run: a new one, or (with --resume) the one this storage path used before.

    Returns (experiment id, run id); the run is RUNNING.
    """
    c = client(opts.mlflow_uri)
    experiment_id = ensure_experiment(opts.mlflow_uri, opts.experiment)
    path = experiment_path(opts)
    if opts.resume:
        runs = c.search_runs([experiment_id], filter_string=f"tags.`{STUDY_TAG}` = 'parent' and "
                             f"tags.`{STORAGE_TAG}` = '{path}'", order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            c.update_run(runs[0].info.run_id, status="RUNNING")
            return experiment_id, runs[0].info.run_id
    tags = {
        STUDY_TAG: "parent", STORAGE_TAG: path, "dataset": opts.dataset, "protocol": opts.protocol,
        "protocol_note": PROTOCOL_NOTES["paper" if opts.protocol == "paper" else "val"],
        "git_commit": git_commit(), **cluster_tags(),
        **{f"version.{k}": v for k, v in versions().items()},
    }
    run = c.create_run(experiment_id, run_name=f"study-{opts.experiment}", tags=tags)
    run_id = run.info.run_id
    log_params_flat(c, run_id, {
        "dataset": opts.dataset, "protocol": opts.protocol, "num_samples": opts.num_samples,
        "max_epochs": opts.max_epochs, "seed": opts.seed, "metric": space.metric, "mode": space.mode,
        "asha.max_t": space.asha.max_t, "asha.grace_period": space.asha.grace_period,
        "asha.reduction_factor": space.asha.reduction_factor, "search_space": str(space.path),
        "storage_path": path,
    })
    c.log_artifact(run_id, str(space.path), "search_space")
    return experiment_id, run_id


def log_best(writer, run_id: str, best: TrialSummary) -> None:
    """Queue: the best trial's params as `best.*`, its best epoch's headline metrics as `best_*`."""
    metrics = {f"best_{k}": float(best.best[k]) for k in HEADLINE_KEYS if k in best.best}
    metrics["best_epoch"] = float(best.best_epoch)

    def run(c) -> None:
        log_params_flat(c, run_id, best.params, prefix="best.")
        log_metrics(c, run_id, metrics, step=0)
        c.set_tag(run_id, "best_trial_id", str(best.trial_id))

    writer.submit("the best trial on the parent run", run)


def log_refit(writer, run_id: str, refit: RefitResult) -> None:
    """Queue: the refit's test-split headline metrics as `test_*`, and its epochs."""
    metrics = {f"test_{k}": float(refit.metrics[k]) for k in HEADLINE_KEYS}
    metrics["refit_epochs"] = float(refit.epochs)
    writer.submit("the refit's test figures on the parent run", lambda c: log_metrics(c, run_id, metrics, step=0))


def log_files(writer, run_id: str, plots: list[Path], summary: dict[str, Any], folder: Path) -> None:
    """Queue: the plots under `plots/` and the summary as `study_summary.json` (written into `folder` now,
    which must outlive the writer)."""
    path = folder / "study_summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))

    def run(c) -> None:
        log_artifacts(c, run_id, plots, "plots")
        c.log_artifact(run_id, str(path))

    writer.submit("the plots and study_summary.json of the parent run", run)


def end_parent_run(writer, run_id: str, status: str, study_state: str | None = None) -> None:
    """Queue: terminate the parent run with `status`, tagging `study_state` (completed, interrupted, failed)."""
    def run(c) -> None:
        if study_state is not None:
            c.set_tag(run_id, "study_state", study_state)
        c.set_terminated(run_id, status=status)

    writer.submit(f"ending the parent run as {status}", run)
