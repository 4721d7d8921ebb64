"""The study's one MLflow writer: a queue drained by a background thread, in order, with retries.

Tune's control loop only appends to the queue, so a slow, remote or briefly unreachable tracking
server never stalls the trials. Operations run in the order they were submitted (a run is created
before its metrics, ended after them). An operation that fails for a reason that can pass (the
server is down or busy, the SQLite file is locked) is retried with a growing pause, up to
`MAX_PAUSE_S`, until it succeeds; one refused by the store for good (an invalid value) is recorded
and dropped. One that failed for want of disk space (the store's file or artifact folder, or the
server's disk, is full) is given up at once: retrying it would hold up everything queued behind it, the
run-ending operations too; the console says once where the space ran out, and `last_error` keeps it.
`close(timeout)` waits that long for the queue to drain; an operation submitted as `final` (ending the
parent run) is still tried once at that deadline, whatever is stuck before it; `close` returns the
operations that could not be logged (given up, or still queued), so the study can say what is missing
and exit 3 (the trials' results are in Tune's storage either way).
"""
from __future__ import annotations

import collections
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from msdn.cli import is_disk_full
from msdn.study.tracking.store import ARTIFACTS_FOLDER, client, sqlite_path

MAX_PAUSE_S = 10.0  # longest wait between two attempts of a failing operation
# MLflow error codes that retrying cannot fix (the request itself is wrong).
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
                    "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED"}


@dataclass(frozen=True)
class Operation:
    """One thing to log: `what` in words (for the report), `run` does it with an MlflowClient."""

    what: str
    run: Callable[[Any], None]
    final: bool = False  # ends a run: tried once more at the close deadline, even when an earlier one is stuck


def is_permanent(exc: BaseException) -> bool:
    """An error the store will give again for the same request, as opposed to an outage."""
    code = getattr(exc, "error_code", None)
    return code in PERMANENT_ERRORS


def no_space_reason(tracking_uri: str, exc: BaseException) -> str:
    """Where an operation ran out of disk space, in words: the file the error names, else the SQLite store's folder
    (its database and its artifacts under ARTIFACTS_FOLDER) with the space left there, else the tracking server."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # the file, when some error in the chain names one
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.filename:
            return f"no space left on device writing {exc.filename}"
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    if tracking_uri.startswith("sqlite:///"):
        folder = sqlite_path(tracking_uri).resolve().parent
        try:
            usage = shutil.disk_usage(folder)
            free = f": {usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"
        except OSError:
            free = ""
        return (f"no space left on device: the MLflow store's folder {folder} (its database and its artifacts in "
                f"{Path(folder, ARTIFACTS_FOLDER)}) is on a full filesystem{free}")
    return f"no space left on device at the tracking store {tracking_uri} (its disk is full)"


class TrackingWriter:
    """Runs MLflow operations on one background thread, in order, retrying through outages."""

    def __init__(self, tracking_uri: str, *, progress: Callable[[str], None] | None = print) -> None:
        # Each attempt fails fast; this writer does the waiting (MLflow's own retries would block it for minutes).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.tracking_uri = tracking_uri
        self.progress = progress
        self.dropped: list[str] = []  # operations the store refused for good, with the reason
        self.no_space: list[str] = []  # operations given up for want of disk space (not logged: `close` returns them)
        self.last_error: str | None = None
        self._queue: collections.deque[Operation] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._busy = False
        self._thread = threading.Thread(target=self._drain, name="mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, what: str, run: Callable[[Any], None], *, final: bool = False) -> None:
        """Queue an operation; returns at once. `final`: it ends a run (see Operation)."""
        with self._cond:
            if self._closing and not self._thread.is_alive():
                raise RuntimeError("the MLflow writer is closed")
            self._queue.append(Operation(what, run, final))
            self._cond.notify_all()

    def pending(self) -> list[str]:
        with self._cond:
            return [op.what for op in self._queue]

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every queued operation to be done; True when they are."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def close(self, timeout: float) -> list[str]:
        """Drain for up to `timeout` seconds, stop the thread, and return what could not be logged: what was given up
        for want of disk space, then what is still queued."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + MAX_PAUSE_S + 30)
        return [*self.no_space, *self.pending()]

    # -- the background thread ----------------------------------------------------------------
    def _drain(self) -> None:
        mlflow_client = client(self.tracking_uri)
        pause = 0.5
        outage_since: float | None = None
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    self._cond.notify_all()
                    return
                if time.monotonic() > self._deadline:
                    last, self._busy = [op for op in self._queue if op.final], True
                    break
                op = self._queue[0]
                self._busy = True
            try:
                op.run(mlflow_client)
            except Exception as exc:  # noqa: BLE001 - any failure is either retried or recorded
                reason = f"{type(exc).__name__}: {str(exc)[:300]}"
                if is_permanent(exc):
                    self.dropped.append(f"{op.what} ({reason})")
                    self._done(op)
                    continue
                if is_disk_full(exc):
                    self._give_up_for_space(op, exc)
                    continue
                self.last_error = reason
                if outage_since is None:
                    outage_since = time.monotonic()
                    self._say(f"MLflow store {self.tracking_uri} is not answering ({reason}); the study goes on and "
                              f"logs {len(self._queue)} queued item(s) when it is back")
                with self._cond:
                    self._busy = False
                    self._cond.wait(min(pause, max(self._deadline - time.monotonic(), 0.01)))
                pause = min(pause * 2, MAX_PAUSE_S)
                continue
            if outage_since is not None:
                self._say(f"MLflow store {self.tracking_uri} is back after {time.monotonic() - outage_since:.0f} s; "
                          "catching up")
                outage_since, self.last_error = None, None
            pause = 0.5
            self._done(op)
        self._last_tries(mlflow_client, last)

    def _last_tries(self, mlflow_client: Any, ops: list[Operation]) -> None:
        """At the close deadline: one attempt of each run-ending operation, in order, whatever was stuck before it
        (an upload that never succeeds must not leave the parent run RUNNING)."""
        for op in ops:
            try:
                op.run(mlflow_client)
            except Exception as exc:  # noqa: BLE001 - reported as not logged, with the last error
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            with self._cond:
                self._queue.remove(op)
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _give_up_for_space(self, op: Operation, exc: BaseException) -> None:
        """Give `op` up, as it failed for want of disk space (the store's `last_error` says where it ran out, and the
        console the first time)."""
        if not self.no_space:
            self._say(f"MLflow store {self.tracking_uri}: {no_space_reason(self.tracking_uri, exc)}. Items that fail "
                      f"for want of space are given up, not retried (the trials' results stay in Tune's storage)")
        self.last_error = no_space_reason(self.tracking_uri, exc)
        self.no_space.append(op.what)
        self._done(op)

    def _done(self, op: Operation) -> None:
        with self._cond:
            if self._queue and self._queue[0] is op:
                self._queue.popleft()
            self._busy = False
            self._cond.notify_all()

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)
