"""MLflow bookkeeping of a study: one experiment per study, a parent run, one child run per trial.

Everything is logged from the Ray driver (a Tune callback), so trials never talk to MLflow and a
cluster's worker nodes need no route to the tracking server. Child runs carry the trial's
parameters, its per-epoch metrics as steps and its final state as the tag `trial_state`
(`completed`, `stopped_early` by ASHA, `errored`). Children are found again by their `trial_id` tag,
so a resumed study continues each trial's own run instead of opening a new one.
"""
from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from ray.tune import Callback

TRIAL_STATE_TAG = "trial_state"
TRIAL_ID_TAG = "trial_id"
PARENT_TAG = "mlflow.parentRunId"
# Result keys that are Tune bookkeeping, not metrics of the model.
SKIPPED_RESULT_KEYS = {
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
    "iterations_since_restore", "pid", "done", "epoch", "trial_seed", "gamma",
}


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


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    c = client(uri)
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            c.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return c.create_experiment(name, artifact_location=artifact_location)


def scalar_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Numeric, finite, non-bookkeeping entries of a Tune result."""
    out = {}
    for key, value in result.items():
        if key in SKIPPED_RESULT_KEYS or key.startswith(("config", "curve_", "placement_")):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def log_metrics(c, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    return client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=5000
    )


class MLflowStudyCallback(Callback):
    """Tune callback that mirrors every trial into an MLflow child run of the study's parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int,
                 tags: dict[str, str] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.tags = dict(tags or {})
        self._client = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_step: dict[str, int] = {}  # run id -> last logged epoch (resumed runs skip repeats)
        self._placed: set[str] = set()  # runs whose placement tags were set since the trial (re)started

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment: keep only the settings, reconnect on use.
        state = dict(self.__dict__)
        state.update(_client=None, _runs={}, _last_step={}, _placed=set())
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = client(self.tracking_uri)
            self._load_existing_children()
        return self._client

    def _load_existing_children(self) -> None:
        for run in child_runs(self.tracking_uri, self.experiment_id, self.parent_run_id):
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if trial_id:
                self._runs[trial_id] = run.info.run_id
                history = self._client.get_metric_history(run.info.run_id, "H")
                self._last_step[run.info.run_id] = max((m.step for m in history), default=0)

    def run_id(self, trial) -> str:
        """The trial's child run, created on first sight (and found again after a resume)."""
        c = self.client
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        run = c.create_run(
            self.experiment_id,
            run_name=str(trial),
            tags={PARENT_TAG: self.parent_run_id, TRIAL_ID_TAG: trial.trial_id, TRIAL_STATE_TAG: "running",
                  **self.tags},
        )
        run_id = run.info.run_id
        self._runs[trial.trial_id] = run_id
        self._last_step[run_id] = 0
        from mlflow.entities import Param

        c.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(trial.config.items())])
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self.run_id(trial)
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, TRIAL_STATE_TAG, "running")
        self._placed.discard(run_id)  # a restarted trial may land on another node

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial whose worker failed (node lost, crash) and is retried per FailureConfig."""
        run_id = self.run_id(trial)
        retries = int(self.client.get_run(run_id).data.tags.get("retries", "0")) + 1
        self.client.set_tag(run_id, "retries", str(retries))
        error = getattr(trial, "error_file", None)
        if error and Path(error).is_file():
            self.client.set_tag(run_id, f"retry_{retries}_error", Path(error).read_text()[-2000:])
        self.client.set_tag(run_id, TRIAL_STATE_TAG, "retrying")
        self._placed.discard(run_id)  # it restarts elsewhere: record the new placement

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        run_id = self.run_id(trial)
        step = int(result.get("training_iteration", 0))
        if run_id not in self._placed:
            self._placed.add(run_id)
            for key in ("host", "node_id", "gpu_ids"):
                if f"placement_{key}" in result:
                    self.client.set_tag(run_id, f"placement.{key}", str(result[f"placement_{key}"]))
        if step <= self._last_step.get(run_id, 0):
            return  # an epoch already logged before the study was interrupted
        self._last_step[run_id] = step
        log_metrics(self.client, run_id, scalar_metrics(result), step)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self.run_id(trial)
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        state = "completed" if epochs >= self.max_epochs else "stopped_early"
        self.client.set_tag(run_id, TRIAL_STATE_TAG, state)
        self.client.set_tag(run_id, "epochs_trained", str(epochs))
        self.client.set_terminated(run_id, status="FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, TRIAL_STATE_TAG, "errored")
        error = getattr(trial, "error_file", None)
        if error and Path(error).is_file():
            self.client.set_tag(run_id, "error", Path(error).read_text()[-4000:])
            self.client.log_artifact(run_id, error)
        self.client.set_terminated(run_id, status="FAILED")

    def close_open_runs(self, status: str = "KILLED") -> int:
        """Terminate child runs still RUNNING (trials that never finished); returns how many."""
        closed = 0
        for run in child_runs(self.tracking_uri, self.experiment_id, self.parent_run_id):
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, TRIAL_STATE_TAG, "interrupted")
                self.client.set_terminated(run.info.run_id, status=status)
                closed += 1
        return closed


def runs_by_trial(uri: str, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    return {r.data.tags.get(TRIAL_ID_TAG): r for r in child_runs(uri, experiment_id, parent_run_id)}


def log_params_flat(c, run_id: str, params: dict[str, Any], prefix: str = "") -> None:
    from mlflow.entities import Param

    existing = c.get_run(run_id).data.params
    new = [Param(prefix + k, str(v)) for k, v in sorted(params.items()) if prefix + k not in existing]
    for i in range(0, len(new), 100):
        c.log_batch(run_id, params=new[i:i + 100])


def log_artifacts(c, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    for path in paths:
        c.log_artifact(run_id, str(path), artifact_path)
