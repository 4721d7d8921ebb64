"""Ctrl+C and SIGTERM during a study: remember them, stop the current phase cleanly, never report success.

A terminal's Ctrl+C sends SIGINT to the driver's whole process group; a job scheduler sends SIGTERM.
Either one makes the study *interrupted*: it exits 130, runs no refit and no test evaluation, closes its
MLflow runs as KILLED and can be continued with `--resume`. Tune's own SIGINT handler is switched off
(`TUNE_DISABLE_SIGINT_HANDLER`), because after it Tune returns a ResultGrid whose interrupted trials
look TERMINATED; the study asks Tune for the same graceful stop through SIGUSR1 instead (Tune saves
the experiment state with those trials still RUNNING, so a resume continues them) and keeps its own
record that the stop was asked for. Ray's workers run in their own process groups, so a terminal's
Ctrl+C reaches the driver only.

Phases: while Tune runs, a stop request becomes Tune's graceful stop (sent from Tune's own loop by
`ForwardStopToTune`, when Tune's SIGUSR1 handler is surely in place); further requests are noted and
ignored while Tune saves its state (SIGKILL remains for the impatient: a hard-killed study is still
resumable). Outside Tune (setup, refit) a stop request raises KeyboardInterrupt at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

from msdn.progress import Progress

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """Records SIGINT/SIGTERM for the study driver and turns them into a clean stop of the current phase."""

    def __init__(self, progress: Progress = print) -> None:
        self.progress = progress
        self.signal_name: str | None = None  # the first stop signal received
        self.count = 0
        self._tuning = False
        self._tune_stop_pending = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> "StopRequests":
        """Take over SIGINT and SIGTERM (main thread only) and keep Tune from installing its SIGINT handler.

        Call it again after `ray.init`, which installs a SIGTERM handler of its own (it exits at once).
        """
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in STOP_SIGNALS:
            self._previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def tuning(self) -> Iterator[None]:
        """While Tune runs: a stop request asks Tune to save its state and return."""
        self._tuning = True
        try:
            yield
        finally:
            self._tuning = False

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def _handle(self, signum: int, _frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        first = self.signal_name is None
        if first:
            self.signal_name = name
        if not self._tuning:
            raise KeyboardInterrupt(name)
        if first:
            self._say(f"\n{name} received: stopping the study; Tune saves its state (continue later with --resume)")
            self._tune_stop_pending = True
        else:
            self._say(f"{name} received again: still saving the study state, please wait")

    def take_tune_stop(self) -> bool:
        """True once after a stop request during tuning: the caller asks Tune to stop."""
        pending, self._tune_stop_pending = self._tune_stop_pending, False
        return pending


def forward_stop_callback(stop: StopRequests):
    """A Tune callback that turns a recorded stop request into Tune's graceful stop, from Tune's loop."""
    from ray.tune import Callback

    class ForwardStopToTune(Callback):
        def on_step_begin(self, iteration: int, trials: list, **info) -> None:
            if stop.take_tune_stop():
                os.kill(os.getpid(), signal.SIGUSR1)  # tune.run's SIGUSR1 handler: save state, then return

        def __reduce__(self):  # Tune pickles callbacks with the experiment; a restored study adds a new one
            return (_no_callback, ())

    return ForwardStopToTune()


def _no_callback():
    from ray.tune import Callback

    return Callback()
