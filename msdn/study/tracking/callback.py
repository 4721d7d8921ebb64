"""The Tune callback that mirrors every trial into an MLflow child run of the study's parent run.

It runs on the Ray driver, so trials never talk to MLflow and worker nodes need no route to the
tracking server. A child run carries the trial's parameters, its per-epoch metrics as steps and its
state as the tag `trial_state` (`running`, `retrying`, then `completed`, `stopped_early` by ASHA,
`errored`, or `interrupted`). Children are found again by their `trial_id` tag, so a resumed study
continues each trial's own run, and epochs re-sent after a resume are not logged twice.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from msdn.study.results import ERRORED, INTERRUPTED, RETRYING, RUNNING, trial_state
from msdn.study.tracking.store import PARENT_TAG, TRIAL_ID_TAG, TRIAL_STATE_TAG, child_runs, client, log_metrics

# Result keys that are Tune bookkeeping or settings, not metrics of the model.
SKIPPED_RESULT_KEYS = {
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
    "iterations_since_restore", "pid", "done", "epoch", "trial_seed", "gamma",
}


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


class MLflowStudyCallback(Callback):
    """Tune callback: one MLflow child run per trial, under the study's parent run."""

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
            tags={PARENT_TAG: self.parent_run_id, TRIAL_ID_TAG: trial.trial_id, TRIAL_STATE_TAG: RUNNING,
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
        self.client.set_tag(run_id, TRIAL_STATE_TAG, RUNNING)
        self._placed.discard(run_id)  # a restarted trial may land on another node

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial whose worker failed (node lost, crash) and is retried per FailureConfig."""
        run_id = self.run_id(trial)
        retries = int(self.client.get_run(run_id).data.tags.get("retries", "0")) + 1
        self.client.set_tag(run_id, "retries", str(retries))
        error = getattr(trial, "error_file", None)
        if error and Path(error).is_file():
            self.client.set_tag(run_id, f"retry_{retries}_error", Path(error).read_text()[-2000:])
        self.client.set_tag(run_id, TRIAL_STATE_TAG, RETRYING)
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
        self.client.set_tag(run_id, TRIAL_STATE_TAG, trial_state(epochs, self.max_epochs, errored=False))
        self.client.set_tag(run_id, "epochs_trained", str(epochs))
        self.client.set_terminated(run_id, status="FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, TRIAL_STATE_TAG, ERRORED)
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
                self.client.set_tag(run.info.run_id, TRIAL_STATE_TAG, INTERRUPTED)
                self.client.set_terminated(run.info.run_id, status=status)
                closed += 1
        return closed
