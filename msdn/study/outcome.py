"""A study's outcome: one typed object the runner builds, which every view of the study's end renders.

`msdn.study.conclude` fills a `StudyOutcome` as the study ends (however it ends); the console's end lines
(`report.end_lines`, `report.interrupted_lines`, `report.unlogged_lines`), the parent run's description
(`tracking.parent.study_description`) and `study_summary.json` (`report.summary_dict`) are functions of it.
Nothing reads MLflow back to learn what happened: the trial states, the counts and the best trial's run
name are the outcome's.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from msdn.study.results import (COMPLETED, INTERRUPTED, RefitResult, Refits, TrialSummary, chosen_settings)

# How a study ends: the parent run's `study_state` tag (the words of the trial states where they match).
FAILED = "failed"  # an error ended it (`StudyOutcome.error`)
UNFINISHED = "running"  # not ended yet
STUDY_STATES = (COMPLETED, INTERRUPTED, FAILED)


@dataclass
class StudyOutcome:
    """How a study ended and what it found, with where everything is.

    Built in stages: `msdn.study.conclude.new_outcome` gives the study and its places, the end of the trials
    the `trials`, the end of the study `best`, `refits`, `best_config_path` and `state`, the MLflow writer's
    close `unlogged` and `dropped`.
    """

    # the study
    experiment: str
    dataset: str
    protocol: str  # "val" or "paper"
    metric: str  # the study metric, and whether it is maximised ("max") or minimised
    mode: str
    param_names: tuple[str, ...]  # the searched parameters, in the search space's order
    planned_trials: int  # --num-samples
    max_epochs: int
    # where it is
    experiment_path: str  # Tune's results: <storage>/<experiment> (a path or URI)
    tracking_uri: str
    experiment_id: str  # MLflow
    parent_run_id: str
    log_file: str | None = None
    journal: str | None = None  # the Optuna study's journal; None under object storage
    # how it ended
    state: str = UNFINISHED  # then COMPLETED, INTERRUPTED or FAILED
    error: str | None = None  # what ended a FAILED study: "<exception type>: <message>"
    stop_signal: str | None = None  # what stopped an INTERRUPTED study (SIGINT, SIGTERM)
    # what it found
    trials: list[TrialSummary] = field(default_factory=list)  # every trial, with its final state
    best: TrialSummary | None = None  # set when the trials ended with a result
    best_run_name: str | None = None  # the best trial's MLflow run name
    refits: Refits | None = None
    best_config_path: str | None = None  # the exported best_config.yaml (a path or URI)
    # what MLflow did not record
    unlogged: list[str] = field(default_factory=list)  # operations the store never accepted
    dropped: list[str] = field(default_factory=list)  # operations the store refused for good
    tracking_error: str | None = None  # the store's last error, while it was not answering

    @property
    def interrupted(self) -> bool:
        return self.state == INTERRUPTED

    @property
    def counts(self) -> dict[str, int]:
        """How many trials ended in each state."""
        return dict(Counter(t.state for t in self.trials))

    @property
    def errors(self) -> list[str]:
        """The trials' errors, in trial order."""
        return [t.error for t in self.trials if t.error]

    @property
    def chosen_settings(self) -> dict[str, float]:
        """The evaluation settings (alpha, gamma) the best trial's settings grid chose at its best epoch; the refits
        use them. {} without a best trial or a grid."""
        return chosen_settings(self.best.best) if self.best is not None and self.best.best else {}

    @property
    def refit(self) -> RefitResult | None:
        """The tuned refit with the first seed: the model best_config.yaml reproduces."""
        return self.refits.tuned[0] if self.refits and self.refits.tuned else None
