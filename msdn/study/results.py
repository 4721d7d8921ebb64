"""What a study's trials and refits produced, as small dataclasses.

Once `Tuner.fit` returns, Tune's ResultGrid becomes plain `TrialRecord`s (`trial_records`): all the study's
end reads of Tune, and what the tests record (tests/data/study/). From them come one `TrialSummary` per
trial (`trial_summaries`) and the best trial (`best_trial`); each refit's `RefitResult` comes back from a
Ray worker, and `Refits` holds them all with their statistics (`msdn.study.stats`). The study's outcome
(`msdn.study.outcome`) gathers these. The rule that names a trial's final state (`trial_state`) lives here
only: the console, the MLflow callback and the outcome all use it, through one `TrialEnds` per study.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from msdn.metrics import GRID_KEYS, SCORE_KEYS
from msdn.study.stats import Interval, paired_difference, t_interval

# One epoch's result as the trial reported it: metrics, calibration curve lists, Tune bookkeeping.
EpochResult = dict[str, Any]

# Trial states. A trial ends in one of the first five (`trial_state`); the last two are MLflow tags of a
# trial still under way.
COMPLETED = "completed"  # ran to the study's max epochs
STOPPED_EARLY = "stopped_early"  # stopped by ASHA before max epochs
ERRORED = "errored"
NO_RESULT = "no result"  # ended without reporting the study metric once
INTERRUPTED = "interrupted"  # cut short by a stop of the study: --resume continues it
RUNNING = "running"
RETRYING = "retrying"


def trial_state(epochs: int, max_epochs: int, errored: bool, stopping: bool = False) -> str:
    """The final state of a trial that ended after `epochs` epochs: the one rule of the console, MLflow and outcome.

    `stopping`: a stop of the study (Ctrl+C, SIGTERM) had been asked for when the trial ended. A trial cut
    short then is interrupted, also when it errored meanwhile: `--resume` continues it (errored trials
    included: Tune restores them with `resume_errored`), so neither its epochs nor its error are final.
    """
    if stopping and (errored or epochs < max_epochs):
        return INTERRUPTED
    if errored:
        return ERRORED
    if epochs <= 0:
        return NO_RESULT
    return COMPLETED if epochs >= max_epochs else STOPPED_EARLY


class TrialEnds:
    """Each trial's final state, decided once (`trial_state`) when Tune first tells a callback that it ended.

    The MLflow callback and the console's counter share one, so that a stop asked for between their two
    hooks cannot give a trial two states; the counter also reports the trials a resumed study restored as
    ended (`ended_earlier`). The outcome reads `states`: a trial not in it had not ended when Tune returned.
    `stop` is the study's msdn.study.interrupt.StopRequests (None: no stop can be asked for).
    """

    def __init__(self, max_epochs: int, stop=None) -> None:
        self.max_epochs = max_epochs
        self.stop = stop
        self.states: dict[str, str] = {}  # trial id -> its final state

    @property
    def stopping(self) -> bool:
        return self.stop is not None and self.stop.requested

    def decide(self, trial_id: str, epochs: int, errored: bool) -> str:
        """The state of a trial Tune says has ended (after `epochs` epochs, with an error or not)."""
        if trial_id not in self.states:
            self.states[trial_id] = trial_state(epochs, self.max_epochs, errored, self.stopping)
        return self.states[trial_id]

    def ended_earlier(self, trial_id: str, epochs: int, errored: bool) -> None:
        """A trial Tune holds as ended though no callback heard it end in this run: a resumed study's trial that
        ended in an earlier run, before any stop (one cut short then is restored unfinished, and continued).
        Ignored once a stop is asked for: Tune then marks the trials it cuts short as ended too."""
        if not self.stopping:
            self.decide(trial_id, epochs, errored)


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
# Test figures summarised over seeds (mean, sd, interval): the scores at the refit's configured settings (S, U, H,
# zsl_acc, AUSUC: msdn.metrics.SCORE_KEYS without the grid's).
REFIT_KEYS = tuple(k for k in SCORE_KEYS if k not in GRID_KEYS)
# Test figures compared tuned minus authors', seed by seed (`Refits.delta`).
DELTA_KEYS = ("H", "AUSUC")


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
    # From the same test evaluation: the seen-unseen curve (thinned, under trainable.SU_CURVE_KEYS) and each class's
    # top-1 at the configured settings (columns of msdn.study.per_class.CLASS_COLUMNS); {} in results stored before.
    seen_unseen: dict[str, list[float]] = field(default_factory=dict)
    classes: dict[str, list] = field(default_factory=dict)
    system: list[dict[str, float]] = field(default_factory=list)  # per epoch: system metrics and their timestamp

    @property
    def name(self) -> str:
        """Its name in the study's storage and in MLflow: <config>-seed<seed>."""
        return refit_name(self.config, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """The flat record of the summary file (the curves, the classes and the configuration left out)."""
        return {**self.metrics, "epochs": self.epochs, "seed": self.seed, "train_time": self.train_time,
                "config": self.config, "checkpoint": self.checkpoint}

    def to_json(self) -> dict[str, Any]:
        """Everything, for the result file a refit leaves in the study's storage (`from_json` reads it back)."""
        return {"metrics": self.metrics, "epochs": self.epochs, "seed": self.seed, "train_time": self.train_time,
                "curve": self.curve, "config": self.config, "train_config": self.train_config,
                "checkpoint": self.checkpoint, "device": self.device, "threads": self.threads,
                "seen_unseen": self.seen_unseen, "classes": self.classes,
                "system": self.system}

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
        """Mean, sd and 95% t interval of each test figure (REFIT_KEYS) over the seeds of `config`; a figure that a
        result stored by an earlier version lacks (AUSUC) is left out."""
        results = self.tuned if config == TUNED else self.baseline
        return {key: t_interval([r.metrics[key] for r in results]) for key in REFIT_KEYS
                if all(key in r.metrics for r in results)}

    def delta(self, key: str = "H") -> Interval | None:
        """Tuned minus baseline `key`, seed by seed, with the t interval of the differences; None without a baseline
        (or when a result stored by an earlier version lacks `key`)."""
        if not self.baseline or not all(key in r.metrics for r in self.tuned + self.baseline):
            return None
        by_seed = {r.seed: r.metrics[key] for r in self.baseline}
        pairs = [(r.metrics[key], by_seed[r.seed]) for r in self.tuned if r.seed in by_seed]
        return paired_difference([a for a, _ in pairs], [b for _, b in pairs])

    def to_dict(self) -> dict[str, Any]:
        """The summary file's record: every refit, the statistics of each configuration, the paired deltas
        (`delta_H`, `delta_AUSUC`: DELTA_KEYS)."""
        record: dict[str, Any] = {
            "seeds": self.seeds, "tuned": [r.to_dict() for r in self.tuned],
            "tuned_stats": {k: v.as_dict() for k, v in self.stats(TUNED).items()},
        }
        if self.baseline:
            record["baseline"] = [r.to_dict() for r in self.baseline]
            record["baseline_stats"] = {k: v.as_dict() for k, v in self.stats(BASELINE).items()}
            record.update({f"delta_{key}": delta.as_dict() for key in DELTA_KEYS
                           if (delta := self.delta(key)) is not None})
        return record


# TrainConfig field -> the result key of the value the settings grid chose for it (msdn.metrics.GRID_KEYS).
CHOSEN_SETTINGS = {"alpha": "grid_alpha", "gamma": "grid_gamma"}


def chosen_settings(best: EpochResult) -> dict[str, float]:
    """The (alpha, gamma) the settings grid chose at an epoch, as TrainConfig fields; {} without a grid."""
    chosen = {field: best.get(key) for field, key in CHOSEN_SETTINGS.items()}
    return {k: float(v) for k, v in chosen.items() if isinstance(v, (int, float)) and math.isfinite(v)}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as Tune's results hold it when `Tuner.fit` returns: all the study's end reads of Tune.

    `results`: its epochs' results (Tune's result dicts, flattened as in `Result.metrics_dataframe`), one per
    epoch, in order; `experiment_tag`: Tune's tag of the trial (`7_lr=0.0003,...`: its number names its
    MLflow run), None when it never reported.
    """

    trial_id: str
    config: dict[str, Any]
    results: list[EpochResult] = field(default_factory=list)
    error: str | None = None
    experiment_tag: str | None = None

    @property
    def epochs(self) -> int:
        """Epochs trained (the last result's training_iteration); 0 without a result."""
        return max((int(r["training_iteration"]) for r in self.results), default=0)

    def to_json(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "config": self.config, "results": self.results, "error": self.error,
                "experiment_tag": self.experiment_tag}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "TrialRecord":
        return cls(**record)


def epoch_rows(df):
    """A trial's results dataframe with one row per epoch: the first reported (a trial resumed from a
    checkpoint newer than Tune's record reports the epochs Tune may lack again; see trainable.train_msdn)."""
    if df is None or df.empty or "training_iteration" not in df:
        return df
    return df.drop_duplicates("training_iteration", keep="first")


def trial_records(results: Iterable) -> list[TrialRecord]:
    """One TrialRecord per Tune `Result` (a ResultGrid iterates over them, one per trial of the experiment,
    started or not), in the grid's order."""
    records = []
    for result in results:
        metrics = result.metrics or {}
        df = epoch_rows(result.metrics_dataframe)
        rows = [] if df is None or df.empty or "training_iteration" not in df else df.to_dict("records")
        tag = metrics.get("experiment_tag")  # one of Tune's auto-filled result fields
        records.append(TrialRecord(str(metrics.get("trial_id", "")), dict(result.config or {}), rows,
                                   str(result.error) if result.error else None, str(tag) if tag else None))
    return records


def trial_summaries(records: Iterable[TrialRecord], metric: str, mode: str, max_epochs: int,
                    ended: Mapping[str, str] | None = None, stopping: bool = False) -> list[TrialSummary]:
    """One TrialSummary per trial, in the records' order.

    A trial's state is the one `ended` (`TrialEnds.states`) gave it when it ended in this run; else
    `trial_state` of its record, `stopping` saying whether the study was being stopped (a trial that had not
    ended by then was cut short).
    """
    ended = ended or {}
    summaries = []
    for record in records:
        params, error = dict(record.config), record.error
        rows = [r for r in record.results if metric in r]
        scored = [r for r in rows if isinstance(r[metric], (int, float)) and math.isfinite(r[metric])]
        epochs = record.epochs if rows else 0
        state = ended.get(record.trial_id) or trial_state(epochs, max_epochs, error is not None, stopping)
        if not scored:
            summaries.append(TrialSummary(record.trial_id, state, epochs, params, error=error))
            continue
        best = (max if mode == "max" else min)(scored, key=lambda r: r[metric])  # the first of equals
        params.update(chosen_settings(best))
        summaries.append(TrialSummary(record.trial_id, state, epochs, params, best=dict(best),
                                      best_epoch=int(best["training_iteration"]), error=error))
    return summaries


def best_trial(trials: Iterable[TrialSummary], metric: str, mode: str) -> TrialSummary | None:
    """The trial with the best finite `metric` (max or min by `mode`); None when no trial has one."""
    scored = [t for t in trials if t.score(metric) is not None]
    if not scored:
        return None
    key = lambda t: t.score(metric)  # noqa: E731
    return max(scored, key=key) if mode == "max" else min(scored, key=key)
