"""The Tune callback that mirrors every trial into an MLflow child run of the study's parent run.

It runs on the Ray driver, so trials never talk to MLflow and worker nodes need no route to the
tracking server. A child run carries the trial's parameters, its per-epoch metrics as steps and its
state as the tag `trial_state` (`running`, `retrying`, then `completed`, `stopped_early` by ASHA,
`errored`, or `interrupted`: `results.trial_state`, decided once per trial by the study's `TrialEnds`, which
the console shares). Its name reads at a glance: Tune's trial number and the searched values
that matter (`t07 lr=3.1e-4 λdis=2.0e-3 λcal=0.12`, `names.trial_run_name`). Children are found again
by their `trial_id` tag, so a resumed study continues each trial's own run under its first name, and
epochs re-sent after a resume are not logged twice.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ray.tune import Callback

from msdn.study.results import INTERRUPTED, RETRYING, RUNNING, TrialEnds, TrialRecord, trial_state
from msdn.study.tracking.names import trial_run_name_of
from msdn.study.tracking.store import PARENT_TAG, TRIAL_ID_TAG, TRIAL_STATE_TAG, log_metrics
from msdn.study.warm_start import trial_tags

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
    """Tune callback: one MLflow child run per trial, under the study's parent run.

    Every hook only queues work on the study's `TrackingWriter`; the run bookkeeping below (trial id
    -> run id, last logged epoch) is read and written by the writer's thread alone.
    """

    def __init__(self, writer, experiment_id: str, parent_run_id: str, max_epochs: int,
                 tags: dict[str, str] | None = None, stop=None, ends: TrialEnds | None = None,
                 inputs: Sequence = ()) -> None:
        self.writer = writer
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.tags = dict(tags or {})
        self.inputs = list(inputs)  # the DatasetInputs every trial reads (tracking.lineage): logged on its run
        # Each trial's final state, shared with the console; `stop` (msdn.study.interrupt.StopRequests) tells it
        # which trials a stop request cut short.
        self.ends = ends or TrialEnds(max_epochs, stop)
        self._loaded = False
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_step: dict[str, int] = {}  # run id -> last logged epoch (resumed runs skip repeats)
        self._placed: set[str] = set()  # runs whose placement tags were set since the trial (re)started

    def __reduce__(self):
        # Tune pickles its callbacks with the experiment; the study installs a fresh one on --resume.
        return (_restored_placeholder, ())

    # -- run bookkeeping (writer thread) ------------------------------------------------------
    def _load_existing_children(self, c) -> None:
        """Find the runs of trials logged before a resume (by their trial_id tag) and their last epoch."""
        self._loaded = True
        for run in c.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                                 max_results=5000):
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if trial_id:
                self._runs[trial_id] = run.info.run_id
                history = c.get_metric_history(run.info.run_id, "H")
                self._last_step[run.info.run_id] = max((m.step for m in history), default=0)

    def _run_id(self, c, trial_id: str, name: str, config: dict[str, Any]) -> str:
        """The trial's child run, created on first sight named `name` (and found again after a resume)."""
        if not self._loaded:
            self._load_existing_children(c)
        if trial_id in self._runs:
            return self._runs[trial_id]
        from mlflow.entities import Param

        run = c.create_run(self.experiment_id, run_name=name,
                           tags={PARENT_TAG: self.parent_run_id, TRIAL_ID_TAG: trial_id, TRIAL_STATE_TAG: RUNNING,
                                 **self.tags, **trial_tags(trial_id)})
        run_id = run.info.run_id
        self._runs[trial_id] = run_id
        self._last_step[run_id] = 0
        c.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(config.items())])
        if self.inputs:
            c.log_inputs(run_id, datasets=self.inputs)
        return run_id

    def _queue(self, what: str, trial, work) -> None:
        """Queue `work(client, run_id)` for the trial's run (created first when needed)."""
        trial_id, name, config = trial.trial_id, trial_run_name_of(trial), dict(trial.config)

        def run(c) -> None:
            work(c, self._run_id(c, trial_id, name, config))

        self.writer.submit(f"{what} of trial {name}", run)

    # -- Tune hooks (driver thread: queue only) -----------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        def work(c, run_id: str) -> None:
            c.update_run(run_id, status="RUNNING")
            c.set_tag(run_id, TRIAL_STATE_TAG, RUNNING)
            self._placed.discard(run_id)  # a restarted trial may land on another node

        self._queue("start", trial, work)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial whose worker failed (node lost, crash) and is retried per FailureConfig."""
        error = _error_text(trial, 2000)

        def work(c, run_id: str) -> None:
            retries = int(c.get_run(run_id).data.tags.get("retries", "0")) + 1
            c.set_tag(run_id, "retries", str(retries))
            if error:
                c.set_tag(run_id, f"retry_{retries}_error", error)
            c.set_tag(run_id, TRIAL_STATE_TAG, RETRYING)
            self._placed.discard(run_id)  # it restarts elsewhere: record the new placement

        self._queue("retry", trial, work)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        step = int(result.get("training_iteration", 0))
        metrics = scalar_metrics(result)
        placement = {key: str(result[f"placement_{key}"]) for key in ("host", "node_id", "gpu_ids")
                     if f"placement_{key}" in result}

        def work(c, run_id: str) -> None:
            if run_id not in self._placed:
                self._placed.add(run_id)
                for key, value in placement.items():
                    c.set_tag(run_id, f"placement.{key}", value)
            if step <= self._last_step.get(run_id, 0):
                return  # an epoch already logged before the study was interrupted
            log_metrics(c, run_id, metrics, step)
            self._last_step[run_id] = step

        self._queue(f"epoch {step}", trial, work)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        state = self.ends.decide(trial.trial_id, epochs, errored=False)

        def work(c, run_id: str) -> None:
            c.set_tag(run_id, TRIAL_STATE_TAG, state)
            c.set_tag(run_id, "epochs_trained", str(epochs))
            c.set_terminated(run_id, status="KILLED" if state == INTERRUPTED else "FINISHED")

        self._queue("end", trial, work)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = _error_text(trial, 4000)
        error_file = getattr(trial, "error_file", None)
        state = self.ends.decide(trial.trial_id, int((trial.last_result or {}).get("training_iteration", 0)),
                                 errored=True)

        def work(c, run_id: str) -> None:
            c.set_tag(run_id, TRIAL_STATE_TAG, state)
            if error:
                c.set_tag(run_id, "error", error)
                c.log_artifact(run_id, error_file)
            c.set_terminated(run_id, status="KILLED" if state == INTERRUPTED else "FAILED")

        self._queue("error", trial, work)

    def reconcile(self, records: Iterable[TrialRecord]) -> None:
        """Queue: make MLflow agree with Tune's record of the finished study (after a hard kill and resume).

        A driver killed hard loses what its writer had not sent yet, and Tune's last snapshot may be
        older or newer than MLflow. So, from Tune's records of every trial (`results.trial_records`): log each
        trial's missing epochs, end the run of every trial Tune counts as finished (FINISHED, or FAILED when it
        errored), and delete runs of trials that the restored study does not know (started after Tune's last
        snapshot; their configurations run again as new trials).
        """
        finished, known = [], set()
        for record in records:
            known.add(record.trial_id)
            if record.trial_id and record.results:
                rows = [(int(row["training_iteration"]), scalar_metrics(row)) for row in record.results]
                finished.append((record.trial_id, rows, record.error is not None))

        def run(c) -> None:
            if not self._loaded:
                self._load_existing_children(c)
            for trial_id, rows, errored in finished:
                run_id = self._runs.get(trial_id)
                if run_id is None:
                    continue
                epochs = max(step for step, _ in rows)
                for step, metrics in sorted(rows, key=lambda item: item[0]):
                    if step > self._last_step.get(run_id, 0):
                        log_metrics(c, run_id, metrics, step)
                        self._last_step[run_id] = step
                if c.get_run(run_id).info.status != "FINISHED" or errored:
                    state = trial_state(epochs, self.max_epochs, errored=errored)
                    c.set_tag(run_id, TRIAL_STATE_TAG, state)
                    c.set_tag(run_id, "epochs_trained", str(epochs))
                    c.set_terminated(run_id, status="FAILED" if errored else "FINISHED")
            for trial_id, run_id in list(self._runs.items()):
                if trial_id not in known:
                    c.delete_run(run_id)  # a trial the restored study never ran: not one of its trials
                    del self._runs[trial_id]

        self.writer.submit("reconciling the trials' runs with Tune's results", run)

    def close_open_runs(self, status: str = "KILLED", states: Mapping[str, str] | None = None) -> None:
        """Queue: terminate child runs still RUNNING (trials that never ended), each tagged with its state in
        `states` (trial id -> state: the study's outcome), else interrupted."""
        states = dict(states or {})

        def run(c) -> None:
            for child in c.search_runs([self.experiment_id],
                                       filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'", max_results=5000):
                if child.info.status == "RUNNING":
                    state = states.get(child.data.tags.get(TRIAL_ID_TAG, ""), INTERRUPTED)
                    c.set_tag(child.info.run_id, TRIAL_STATE_TAG, state)
                    c.set_terminated(child.info.run_id, status=status)

        self.writer.submit("closing the trials' runs still open", run)


def _error_text(trial, limit: int) -> str | None:
    """The tail of a trial's error file, read now (Tune may rewrite it when the trial is retried)."""
    error = getattr(trial, "error_file", None)
    if error and Path(error).is_file():
        return Path(error).read_text()[-limit:]
    return None


def _restored_placeholder() -> Callback:
    return Callback()
