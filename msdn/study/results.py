"""What a study produced, as small dataclasses: one TrialSummary per trial, the refit, the study.

Built on the driver from Tune's ResultGrid (`trial_summaries`, `best_trial`); the refit's
`RefitResult` comes back from a Ray worker. The rule that names a finished trial's state
(`trial_state`) lives here only: the report and the MLflow callback both use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

# One epoch's result as the trial reported it: metrics, calibration curve lists, Tune bookkeeping.
EpochResult = dict[str, Any]

# Trial states. The first three end a trial (`trial_state`); the others are MLflow tags of a trial
# that is still under way or was cut off.
COMPLETED = "completed"  # ran to the study's max epochs
STOPPED_EARLY = "stopped_early"  # stopped by ASHA before max epochs
ERRORED = "errored"
NO_RESULT = "no result"  # ended without reporting the study metric once
RUNNING = "running"
RETRYING = "retrying"
INTERRUPTED = "interrupted"


def trial_state(epochs: int, max_epochs: int, errored: bool) -> str:
    """The state of a trial that ended after `epochs` epochs: errored, completed or stopped early."""
    if errored:
        return ERRORED
    return COMPLETED if epochs >= max_epochs else STOPPED_EARLY


@dataclass(frozen=True)
class TrialSummary:
    """One trial: its parameters, final state and its best epoch by the study metric."""

    trial_id: str
    state: str
    epochs: int  # epochs trained
    params: dict[str, Any]
    best: EpochResult | None = None  # the best epoch's result; None when the trial reported none
    best_epoch: int | None = None
    error: str | None = None

    def score(self, metric: str) -> float | None:
        """The trial's best value of `metric`, or None when it has none (or a NaN)."""
        if self.best is None:
            return None
        value = self.best.get(metric)
        if value is None or not math.isfinite(value):
            return None
        return float(value)


@dataclass(frozen=True)
class RefitResult:
    """The best configuration retrained on trainval and evaluated once on the test split."""

    metrics: dict[str, float]  # msdn.metrics.GZSLResult.summary() on the test split
    epochs: int
    seed: int
    train_time: float  # seconds
    curve: dict[str, list[float]]  # the test calibration curve under trainable.CURVE_KEYS

    def to_dict(self) -> dict[str, Any]:
        """The flat record of the summary file (the curve left out)."""
        return {**self.metrics, "epochs": self.epochs, "seed": self.seed, "train_time": self.train_time}


@dataclass
class StudyResult:
    """A study's outcome: where it is stored and tracked, its trials, its best trial and refit."""

    experiment_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    refit: RefitResult | None = None
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)
    unlogged: list[str] = field(default_factory=list)  # MLflow operations the store never accepted
    dropped: list[str] = field(default_factory=list)  # MLflow operations the store refused for good


def trial_summaries(results: Iterable, metric: str, mode: str, max_epochs: int) -> list[TrialSummary]:
    """One TrialSummary per Tune `Result` (a ResultGrid iterates over them), in the grid's order."""
    summaries = []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id", "")
        params = dict(result.config or {})
        error = str(result.error) if result.error else None
        df = result.metrics_dataframe
        if df is None or df.empty or metric not in df:
            summaries.append(TrialSummary(trial_id, ERRORED if error else NO_RESULT, 0, params, error=error))
            continue
        index = df[metric].idxmax() if mode == "max" else df[metric].idxmin()
        best = df.loc[index].to_dict()
        epochs = int(df["training_iteration"].max())
        summaries.append(TrialSummary(trial_id, trial_state(epochs, max_epochs, error is not None), epochs, params,
                                      best=best, best_epoch=int(best["training_iteration"]), error=error))
    return summaries


def best_trial(trials: Iterable[TrialSummary], metric: str, mode: str) -> TrialSummary | None:
    """The trial with the best finite `metric` (max or min by `mode`); None when no trial has one."""
    scored = [t for t in trials if t.score(metric) is not None]
    if not scored:
        return None
    key = lambda t: t.score(metric)  # noqa: E731
    return max(scored, key=key) if mode == "max" else min(scored, key=key)
