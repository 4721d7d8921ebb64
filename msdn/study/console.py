"""What a person sees while a study's trials run: a live display on a terminal, plain lines elsewhere.

`TrialCounter`, a Tune callback on the driver, keeps a `Snapshot` of the study: trials ended (completed,
stopped early by ASHA, errored) and running out of the total, trial-epochs done out of their upper bound
(num_samples x max_epochs, less what the ended trials did not use), the best value of the study metric.
It prints one line when a trial ends. On a terminal a `rich` live display redraws the snapshot in place
(`LiveDisplay`); elsewhere (CI, `ray job submit` logs, a pipe, pytest) a plain status line is printed
every PLAIN_INTERVAL_S seconds (`PlainDisplay`). The formatting is pure functions of the snapshot.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Protocol

from ray.tune import Callback

from msdn.progress import Progress, silent
from msdn.study.results import COMPLETED, ERRORED, INTERRUPTED, NO_RESULT, STOPPED_EARLY, TrialEnds
from msdn.study.tracking.names import trial_number
from msdn.study.trainable import improves

WIDTH = 100  # the longest line the display prints
PLAIN_INTERVAL_S = 30.0  # seconds between two plain status lines
KEY_PARAMS = 3  # parameters shown with the best trial: the search space's first ones
BAR_WIDTH = 24
STATE_WORDS = {COMPLETED: "completed", STOPPED_EARLY: "stopped early", ERRORED: "errored",
               INTERRUPTED: "interrupted", NO_RESULT: "no result"}


@dataclass(frozen=True)
class Best:
    """The best value of the study metric so far, the trial that reached it and a few of its parameters."""

    value: float
    trial_id: str
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """The study's trials at one moment, as counted from Tune's trials (`snapshot_of`)."""

    total: int  # trials the study runs (num_samples)
    max_epochs: int
    completed: int = 0
    stopped: int = 0  # stopped early by ASHA (or by an interruption)
    errored: int = 0
    running: int = 0
    epochs: int = 0  # trial-epochs done, over all trials
    unused: int = 0  # epochs the ended trials did not train: no longer part of the bound
    best: Best | None = None

    @property
    def ended(self) -> int:
        return self.completed + self.stopped + self.errored

    @property
    def bound(self) -> int:
        """An upper bound of the trial-epochs the study trains: every trial not ended may run max_epochs."""
        return self.total * self.max_epochs - self.unused


def snapshot_of(trials: Iterable[tuple[str, int]], total: int, max_epochs: int, best: Best | None = None) -> Snapshot:
    """Count (Tune status, epochs trained) pairs: TERMINATED trials completed or stopped by their epochs."""
    counts = {"completed": 0, "stopped": 0, "errored": 0, "running": 0, "epochs": 0, "unused": 0}
    for status, epochs in trials:
        counts["epochs"] += epochs
        if status == "RUNNING":
            counts["running"] += 1
        elif status in ("TERMINATED", "ERROR"):
            kind = "errored" if status == "ERROR" else "completed" if epochs >= max_epochs else "stopped"
            counts[kind] += 1
            counts["unused"] += max(max_epochs - epochs, 0)
    return Snapshot(total=total, max_epochs=max_epochs, best=best, **counts)


# -- words ---------------------------------------------------------------------------------------------------------
def duration(seconds: float | None) -> str:
    """45s, 4m05s, 2h03m; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(snap: Snapshot, epochs_before: int, elapsed: float) -> float | None:
    """Seconds left for the epochs up to the bound (so itself an upper bound), at the pace of the `elapsed`
    seconds in which the trials went from `epochs_before` (an earlier run's, when resumed) to snap.epochs.
    None before the first epoch."""
    done = snap.epochs - epochs_before
    if done <= 0 or elapsed <= 0:
        return None
    return max(snap.bound - snap.epochs, 0) * elapsed / done


def clip(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trials_text(snap: Snapshot) -> str:
    """'3/12 ended: 2 completed, 1 stopped early, 0 errored; 4 running'."""
    return (f"{snap.ended}/{snap.total} ended: {snap.completed} completed, {snap.stopped} stopped early, "
            f"{snap.errored} errored; {snap.running} running")


def epochs_text(snap: Snapshot, elapsed: float, eta: float | None) -> str:
    """'35/≤96 trial-epochs, 2m10s, ETA ≤ 4m05s' (≤: ASHA stops trials early, so fewer may run)."""
    return f"{snap.epochs}/≤{snap.bound} trial-epochs, {duration(elapsed)}, ETA ≤ {duration(eta)}"


def best_text(best: Best | None, metric: str) -> str:
    """'H_grid 0.3527, trial 1bc56d21: lambda_dis=0.000139 lambda_cal=0.0149 lr=0.00021'."""
    if best is None:
        return f"{metric}: no result yet"
    params = " ".join(f"{name}={number(value)}" for name, value in best.params)
    return f"{metric} {best.value:.4f}, trial {best.trial_id}" + (f": {params}" if params else "")


def status_line(snap: Snapshot, metric: str, elapsed: float, eta: float | None, width: int = WIDTH) -> str:
    """One plain progress line; the per-state counts, then the best, are left out when it would be too wide."""
    head = f"[{duration(elapsed)}] trials {snap.ended}/{snap.total} ended, {snap.running} running"
    states = f" ({snap.completed} completed, {snap.stopped} stopped early, {snap.errored} errored)"
    epochs = f"; trial-epochs {snap.epochs}/≤{snap.bound}, ETA ≤ {duration(eta)}"
    best = f"; best {metric} {snap.best.value:.4f} ({snap.best.trial_id})" if snap.best else ""
    for parts in ((head, states, epochs, best), (head, epochs, best), (head, states, epochs), (head, epochs)):
        line = "".join(parts)
        if len(line) <= width:
            return line
    return clip(line, width)


def trial_end_line(trial_id: str, state: str, epochs: int, max_epochs: int, metric: str, value: float | None,
                   new_best: bool = False, error: str | None = None, width: int = WIDTH,
                   number: int | None = None) -> str:
    """'t03 1bc56d21  stopped early  2/3 epochs  H_grid 0.1353' (Tune's trial number, as the trial's MLflow run
    name begins; 'trial 1bc56d21' without one), with the error's last line if it errored."""
    score = f"{metric} {value:.4f}" if value is not None else f"{metric} -"
    label = f"t{number:02d} {trial_id}" if number is not None else f"trial {trial_id}"
    line = f"{label}  {STATE_WORDS.get(state, state):<13}  {epochs}/{max_epochs} epochs  {score}"
    if new_best:
        line += "  (best so far)"
    if error:
        line += f"  {error}"
    return clip(line, width)


def last_error_line(error_file: str | None) -> str | None:
    """The last non-empty line of a trial's error file (the exception), or None."""
    try:
        with open(error_file or "", encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


# -- displays ------------------------------------------------------------------------------------------------------
class Display(Protocol):
    def start(self) -> None: ...
    def update(self, snap: Snapshot, elapsed: float, eta: float | None) -> None: ...
    def line(self, text: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class PlainDisplay:
    """Lines only, no redraw: a status line every `interval` seconds (None: never), and the given lines."""

    progress: Progress
    metric: str
    interval: float | None = PLAIN_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    _last: float | None = field(default=None, init=False)

    def start(self) -> None:
        self._last = self.clock()

    def update(self, snap: Snapshot, elapsed: float, eta: float | None) -> None:
        now = self.clock()
        if self.interval is None or self._last is None or now - self._last < self.interval:
            return
        self._last = now
        self.line(status_line(snap, self.metric, elapsed, eta))

    def line(self, text: str) -> None:
        (self.progress or silent)(text)

    def stop(self) -> None:
        self._last = None


def live_view(snap: Snapshot, metric: str, elapsed: float, eta: float | None):
    """The live display: two bars (trials ended, trial-epochs) and the best so far, at most WIDTH columns."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    rows = Table.grid(padding=(0, 1))
    rows.add_column(width=6)
    rows.add_column(width=BAR_WIDTH)
    rows.add_column(max_width=WIDTH - BAR_WIDTH - 8, no_wrap=True, overflow="ellipsis")
    rows.add_row("trials", ProgressBar(total=max(snap.total, 1), completed=snap.ended, width=BAR_WIDTH),
                 trials_text(snap))
    rows.add_row("epochs", ProgressBar(total=max(snap.bound, 1), completed=snap.epochs, width=BAR_WIDTH),
                 epochs_text(snap, elapsed, eta))
    return Group(rows, Text(clip(f"best   {best_text(snap.best, metric)}"), no_wrap=True, overflow="ellipsis"))


class LiveDisplay:
    """The snapshot redrawn in place on a terminal (rich.live); other output scrolls above it."""

    def __init__(self, progress: Progress, metric: str) -> None:
        self.progress = progress
        self.metric = metric
        self._view: tuple[Snapshot, float, float | None] | None = None
        self._live = None

    def start(self) -> None:
        from rich.live import Live

        self._live = Live(get_renderable=self._render, refresh_per_second=2, transient=False,
                          redirect_stdout=True, redirect_stderr=True)
        self._live.start()

    def _render(self):
        from rich.text import Text

        if self._view is None:
            return Text("trials starting…")
        return live_view(self._view[0], self.metric, *self._view[1:])

    def update(self, snap: Snapshot, elapsed: float, eta: float | None) -> None:
        self._view = (snap, elapsed, eta)  # one assignment: the refresh thread reads a whole view

    def line(self, text: str) -> None:
        (self.progress or silent)(text)  # print is redirected above the display while it is live

    def stop(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None


def is_terminal() -> bool:
    """Whether stdout is a terminal that can redraw (not a pipe, a file, a dumb terminal)."""
    from rich.console import Console

    console = Console()
    return console.is_terminal and not console.is_dumb_terminal


# -- the Tune callback ---------------------------------------------------------------------------------------------
class TrialCounter(Callback):
    """Driver side: counts Tune's trials and epochs into a Snapshot, feeds a display, says when a trial ends.

    Used as a context manager around `Tuner.fit`, which starts and stops the display.
    """

    def __init__(self, display: Display, *, total: int, max_epochs: int, metric: str, mode: str,
                 key_params: Iterable[str] = (), stop=None, ends: TrialEnds | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.display = display
        self.total, self.max_epochs, self.metric, self.mode = total, max_epochs, metric, mode
        self.key_params = tuple(key_params)[:KEY_PARAMS]
        self.stop = stop  # msdn.study.interrupt.StopRequests: trials ending after a stop request were interrupted
        self.ends = ends or TrialEnds(max_epochs, stop)  # each trial's final state, shared with the MLflow callback
        self.clock = clock
        self.snapshot = Snapshot(total=total, max_epochs=max_epochs)
        self._best_of: dict[str, float] = {}  # trial id -> its best value of the metric
        self._ended: dict[str, str] = {}  # trial id -> the status it ends with (Tune sets it a few steps later)
        self._started: float | None = None
        self._pace_from: tuple[int, float] | None = None  # (trial-epochs, time) when first counted: the pace's start

    def __reduce__(self):  # Tune pickles its callbacks with the experiment; a resumed study adds a new one
        return (Callback, ())

    def __enter__(self) -> "TrialCounter":
        self._started = self.clock()
        self.display.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.display.stop()
        self.display.line(self.summary())

    def summary(self) -> str:
        s = self.snapshot
        return (f"trials: {s.ended} of {s.total} ended in {duration(self.elapsed())} ({s.completed} completed, "
                f"{s.stopped} stopped early, {s.errored} errored), {s.epochs} trial-epochs")

    def elapsed(self) -> float:
        return 0.0 if self._started is None else self.clock() - self._started

    # -- counting ------------------------------------------------------------------------------------------------
    def _note(self, trial, value: Any) -> bool:
        """Record a value of the trial's metric; True when it is the study's new best."""
        trial_id = trial.trial_id
        if improves(value, self._best_of.get(trial_id), self.mode):
            self._best_of[trial_id] = float(value)
        best = self.snapshot.best
        if not improves(value, best.value if best else None, self.mode):
            return False
        config = getattr(trial, "config", {}) or {}
        params = tuple((name, config[name]) for name in self.key_params if name in config)
        self.snapshot = replace(self.snapshot, best=Best(float(value), trial_id, params))
        return True

    def _recount(self, trials: list) -> None:
        """Count `trials`, those seen ending as ended (Tune marks them once their worker has stopped)."""
        for trial in trials:  # a resumed study's trials: their best from Tune's record of them
            if trial.trial_id not in self._best_of:
                analysis = (getattr(trial, "metric_analysis", None) or {}).get(self.metric) or {}
                self._note(trial, analysis.get(self.mode))
            if trial.status in ("TERMINATED", "ERROR") and trial.trial_id not in self._ended:
                self.ends.ended_earlier(trial.trial_id, _epochs(trial), errored=trial.status == "ERROR")
        # After a stop request Tune marks the trials it stopped TERMINATED: they were interrupted, not ended.
        stopping = self.stop is not None and self.stop.requested
        states = ((self._ended.get(t.trial_id) or ("PAUSED" if stopping and t.status == "TERMINATED" else t.status),
                   _epochs(t)) for t in trials)
        self.snapshot = snapshot_of(states, self.total, self.max_epochs, self.snapshot.best)
        if self._pace_from is None:  # a resumed study's trials start with the epochs of its earlier runs
            self._pace_from = (self.snapshot.epochs, self.clock())
        self.display.update(self.snapshot, self.elapsed(), self.eta())

    def eta(self) -> float | None:
        if self._pace_from is None:
            return None
        epochs, since = self._pace_from
        return eta_seconds(self.snapshot, epochs, self.clock() - since)

    # -- Tune hooks (the driver's loop) --------------------------------------------------------------------------
    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._recount(trials)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._note(trial, result.get(self.metric))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._trial_ended(trials, trial, self.ends.decide(trial.trial_id, _epochs(trial), errored=False))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._trial_ended(trials, trial, self.ends.decide(trial.trial_id, _epochs(trial), errored=True),
                          last_error_line(getattr(trial, "error_file", None)), errored=True)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        error = last_error_line(getattr(trial, "error_file", None)) or "its worker failed"
        self.display.line(clip(f"trial {trial.trial_id} failed after {_epochs(trial)}/{self.max_epochs} epochs, "
                               f"retrying from its last checkpoint: {error}"))

    def on_experiment_end(self, trials: list, **info) -> None:
        self._recount(trials)

    def _trial_ended(self, trials: list, trial, state: str, error: str | None = None, errored: bool = False) -> None:
        self._ended[trial.trial_id] = "ERROR" if errored else "TERMINATED"  # Tune's status, as the snapshot counts
        self._recount(trials)
        value = self._best_of.get(trial.trial_id)
        best = self.snapshot.best
        new_best = best is not None and best.trial_id == trial.trial_id
        self.display.line(trial_end_line(trial.trial_id, state, _epochs(trial), self.max_epochs, self.metric, value,
                                         new_best=new_best, error=error,
                                         number=trial_number(getattr(trial, "experiment_tag", None))))


def _epochs(trial) -> int:
    """Epochs a Tune trial has trained (its last result's training_iteration)."""
    try:
        return int((trial.last_result or {}).get("training_iteration", 0) or 0)
    except (TypeError, ValueError):
        return 0


def study_display(progress: Progress, metric: str, *, live: bool, verbose: bool) -> Display:
    """A live display on a terminal; plain lines otherwise (with -v, only the trial lines: Tune's table shows the rest)."""
    if live:
        return LiveDisplay(progress, metric)
    return PlainDisplay(progress, metric, interval=None if verbose else PLAIN_INTERVAL_S)

