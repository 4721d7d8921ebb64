"""What a study produced, as small dataclasses: one TrialSummary per trial, the refits, the study.

Built on the driver from Tune's ResultGrid (`trial_summaries`, `best_trial`); each refit's
`RefitResult` comes back from a Ray worker, and `Refits` holds them all with their statistics
(`msdn.study.stats`). The rule that names a finished trial's state (`trial_state`) lives here only:
the report and the MLflow callback both use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from msdn.study.stats import Interval, paired_difference, t_interval

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
    """One trial: its parameters, final state and its best epoch by the study metric.

    `params` is the configuration the trial stands for: its sampled values, and the evaluation-time settings
    (alpha, gamma) its settings grid chose at its best epoch (`chosen_settings`), which the refit uses.
    """

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


# The two configurations a study refits: the one it chose, and the authors' recipe for the dataset.
TUNED = "tuned"
BASELINE = "baseline"
# Test figures summarised over seeds (mean, sd, interval): GZSLResult.summary() keys.
REFIT_KEYS = ("S", "U", "H", "zsl_acc")


@dataclass(frozen=True)
class RefitResult:
    """One configuration retrained on trainval with one seed and evaluated once on the test split."""

    metrics: dict[str, float]  # msdn.metrics.GZSLResult.summary() on the test split
    epochs: int
    seed: int
    train_time: float  # seconds
    curve: dict[str, list[float]]  # the test calibration curve under trainable.CURVE_KEYS
    config: str = TUNED  # TUNED or BASELINE
    train_config: dict[str, Any] = field(default_factory=dict)  # the TrainConfig it trained with (TrainConfig.to_dict)
    checkpoint: str | None = None  # where its trained model is stored (a path or URI), for msdn.evaluate
    device: str = "cpu"  # where it trained, and with how many torch threads: float sums, hence the figures,
    threads: int = 1  # depend on both (python -m msdn.train repeats it bit for bit on the same ones)

    @property
    def name(self) -> str:
        """Its name in the study's storage and in MLflow: <config>-seed<seed>."""
        return refit_name(self.config, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """The flat record of the summary file (the curve and the configuration left out)."""
        return {**self.metrics, "epochs": self.epochs, "seed": self.seed, "train_time": self.train_time,
                "config": self.config, "checkpoint": self.checkpoint}

    def to_json(self) -> dict[str, Any]:
        """Everything, for the result file a refit leaves in the study's storage (`from_json` reads it back)."""
        return {"metrics": self.metrics, "epochs": self.epochs, "seed": self.seed, "train_time": self.train_time,
                "curve": self.curve, "config": self.config, "train_config": self.train_config,
                "checkpoint": self.checkpoint, "device": self.device, "threads": self.threads}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "RefitResult":
        return cls(**record)


def refit_name(config: str, seed: int) -> str:
    return f"{config}-seed{seed}"


@dataclass(frozen=True)
class Refits:
    """Every refit of a study, tuned and baseline (the authors' configuration), paired by seed."""

    tuned: list[RefitResult]
    baseline: list[RefitResult] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.tuned]

    def stats(self, config: str = TUNED) -> dict[str, Interval]:
        """Mean, sd and 95% t interval of each test figure (REFIT_KEYS) over the seeds of `config`."""
        results = self.tuned if config == TUNED else self.baseline
        return {key: t_interval([r.metrics[key] for r in results]) for key in REFIT_KEYS}

    def delta(self, key: str = "H") -> Interval | None:
        """Tuned minus baseline `key`, seed by seed, with the t interval of the differences; None without a baseline."""
        if not self.baseline:
            return None
        by_seed = {r.seed: r.metrics[key] for r in self.baseline}
        pairs = [(r.metrics[key], by_seed[r.seed]) for r in self.tuned if r.seed in by_seed]
        return paired_difference([a for a, _ in pairs], [b for _, b in pairs])

    def to_dict(self) -> dict[str, Any]:
        """The summary file's record: every refit, the statistics of each configuration, the paired delta of H."""
        record: dict[str, Any] = {
            "seeds": self.seeds, "tuned": [r.to_dict() for r in self.tuned],
            "tuned_stats": {k: v.as_dict() for k, v in self.stats(TUNED).items()},
        }
        if self.baseline:
            record["baseline"] = [r.to_dict() for r in self.baseline]
            record["baseline_stats"] = {k: v.as_dict() for k, v in self.stats(BASELINE).items()}
            record["delta_H"] = self.delta("H").as_dict()
        return record


@dataclass
class StudyResult:
    """A study's outcome: where it is stored and tracked, its trials, its best trial and refit."""

    experiment_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    refits: Refits | None = None
    best_config_path: str | None = None  # the exported best_config.yaml (a path or URI)
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)
    unlogged: list[str] = field(default_factory=list)  # MLflow operations the store never accepted
    dropped: list[str] = field(default_factory=list)  # MLflow operations the store refused for good

    @property
    def refit(self) -> RefitResult | None:
        """The tuned refit with the first seed: the model best_config.yaml reproduces."""
        return self.refits.tuned[0] if self.refits and self.refits.tuned else None


# TrainConfig field -> the result key of the value the settings grid chose for it (msdn.metrics.GRID_KEYS).
CHOSEN_SETTINGS = {"alpha": "grid_alpha", "gamma": "grid_gamma"}


def chosen_settings(best: EpochResult) -> dict[str, float]:
    """The (alpha, gamma) the settings grid chose at an epoch, as TrainConfig fields; {} without a grid."""
    chosen = {field: best.get(key) for field, key in CHOSEN_SETTINGS.items()}
    return {k: float(v) for k, v in chosen.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def epoch_rows(df):
    """A trial's results dataframe with one row per epoch: the first reported (a trial resumed from a
    checkpoint newer than Tune's record reports the epochs Tune may lack again; see trainable.train_msdn)."""
    if df is None or df.empty or "training_iteration" not in df:
        return df
    return df.drop_duplicates("training_iteration", keep="first")


def trial_summaries(results: Iterable, metric: str, mode: str, max_epochs: int) -> list[TrialSummary]:
    """One TrialSummary per Tune `Result` (a ResultGrid iterates over them), in the grid's order."""
    summaries = []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id", "")
        params = dict(result.config or {})
        error = str(result.error) if result.error else None
        df = epoch_rows(result.metrics_dataframe)
        if df is None or df.empty or metric not in df:
            summaries.append(TrialSummary(trial_id, ERRORED if error else NO_RESULT, 0, params, error=error))
            continue
        index = df[metric].idxmax() if mode == "max" else df[metric].idxmin()
        best = df.loc[index].to_dict()
        epochs = int(df["training_iteration"].max())
        params.update(chosen_settings(best))
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
