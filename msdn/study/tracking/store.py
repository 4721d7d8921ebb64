"""The MLflow tracking store: checking the URI early, the client, and batched logging helpers.

MLflow is imported inside the functions, so `resolve_options` can check a URI cheaply.
"""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

# Tags that tie a study's runs together.
STUDY_TAG = "msdn.study"  # "parent" on the study's run, "trial" on each trial's run
STORAGE_TAG = "msdn.storage"  # the Tune experiment path of the study (finds the parent on --resume)
TRIAL_STATE_TAG = "trial_state"
TRIAL_ID_TAG = "trial_id"
PARENT_TAG = "mlflow.parentRunId"


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used."""


def default_tracking_uri(workdir: str | Path = ".") -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before Ray starts, when the tracking store is unreachable or unusable."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"HTTP {response.status}")
        except (urllib.error.URLError, OSError, TrackingError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"--mlflow-uri {uri}: the MLflow tracking server does not answer ({reason}) at {url}. "
                f"Expected a running `mlflow server` reachable from this machine (for example "
                f"`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`), "
                f"or leave --mlflow-uri out to use a SQLite file in the working directory."
            ) from None
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise TrackingError(
                f"--mlflow-uri {uri}: the folder {path.parent} does not exist; expected an existing folder "
                f"for the SQLite file (it is created on first use)."
            )
        return
    if uri.startswith(("file:", "/")) or "://" not in uri:
        return
    raise TrackingError(f"--mlflow-uri {uri}: expected sqlite:///PATH, a folder, or an http(s):// tracking server")


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of the experiment `name`, created (or restored from deleted) when needed."""
    c = client(uri)
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            c.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return c.create_experiment(name)


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    """Every run whose parent is `parent_run_id` (the study's trial runs)."""
    return client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=5000
    )


def log_metrics(c, run_id: str, metrics: dict[str, float], step: int) -> None:
    """All of `metrics` at one step, in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


def log_params_flat(c, run_id: str, params: dict[str, Any], prefix: str = "") -> None:
    """Log the params the run does not have yet (MLflow refuses to change a logged param)."""
    from mlflow.entities import Param

    existing = c.get_run(run_id).data.params
    new = [Param(prefix + k, str(v)) for k, v in sorted(params.items()) if prefix + k not in existing]
    for i in range(0, len(new), 100):
        c.log_batch(run_id, params=new[i:i + 100])


def log_artifacts(c, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    for path in paths:
        c.log_artifact(run_id, str(path), artifact_path)
