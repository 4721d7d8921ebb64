"""Where a study's log lines go: its log file always, the console only with -v.

Ray, Tune, MLflow and Optuna log through Python's `logging`, each library with its own console handler.
`StudyLog` sends their records, Python warnings, Tune's status table and what the trials print on Ray's
workers (forwarded to the driver) to `study.log` in the study's folder, <storage>/<experiment>/ (for
s3:// or gs:// storage, <experiment>.study.log in the working directory); with -v to the console too, as
before. Every line the study shows a person is copied there as well, so the file alone tells the story.

    with StudyLog(verbose=False) as log:
        progress = log.echo(print)             # the console's lines, also in the file
        log.open(log_path(opts))               # records logged before this are kept and written first
        log.capture_worker_output(session_dir) # after ray.init
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Any

from msdn.progress import Progress
from msdn.study import ray_private
from msdn.study.options import StudyOptions, experiment_path, is_uri

LOG_NAME = "study.log"
# Loggers that print to the console through handlers of their own (propagation off): Ray's, Optuna's, and
# those MLflow sets up when imported.
LIBRARY_LOGGERS = ("ray", "optuna", "mlflow", "alembic", "sqlalchemy.engine", "huey")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# File-only loggers (propagation off): the console's lines, Tune's status table, the workers' output.
CONSOLE_LOGGER = "msdn.study.console"
TUNE_STATUS_LOGGER = "msdn.study.tune_status"
WORKER_LOGGER = "msdn.study.workers"
FILE_ONLY = (CONSOLE_LOGGER, TUNE_STATUS_LOGGER, WORKER_LOGGER)
RAY_PRINTER = "ray_print_logs"  # Ray's handler that prints the workers' output on the driver's console
OUR_PRINTER = "msdn_study_log"


def log_path(opts: StudyOptions) -> Path:
    """The study's log file: in its folder for a local --storage-path, else in the working directory."""
    if is_uri(opts.storage_path):
        return Path.cwd() / f"{opts.experiment}.{LOG_NAME}"
    return Path(experiment_path(opts)) / LOG_NAME


class StudyLog:
    """Routes the libraries' log records to the study's log file (and with `verbose` also to stderr).

    Until `open` names the file, records wait in memory: the path depends on options that are checked
    first. Leaving the `with` block restores the loggers as they were and writes an error that ends
    the study into the file.
    """

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.path: Path | None = None
        self._sink: logging.Handler = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        self._console: logging.Handler | None = None
        self._saved: dict[str, tuple[list[logging.Handler], bool, int]] = {}
        self._ray_printers: list[tuple[str, Any]] = []
        self._capturing = False

    # -- the loggers ---------------------------------------------------------------------------
    def __enter__(self) -> "StudyLog":
        self._sink.setFormatter(logging.Formatter(FORMAT))
        self._sink.setLevel(logging.INFO)  # it hands records to the file without the file's level check
        for name in (*LIBRARY_LOGGERS, *FILE_ONLY, ""):
            logger = logging.getLogger(name)
            self._saved[name] = (list(logger.handlers), logger.propagate, logger.level)
        self._reroute()
        for name in FILE_ONLY:
            logger = logging.getLogger(name)
            logger.propagate = False
            logger.setLevel(logging.INFO)
            logger.addHandler(self._sink)
        root = logging.getLogger()
        root.addHandler(self._sink)
        if self.verbose:
            self._console = logging.StreamHandler(sys.stderr)
            self._console.setFormatter(logging.Formatter(FORMAT))
            root.addHandler(self._console)
        logging.captureWarnings(True)  # library warnings are log lines too (py.warnings)
        return self

    def _reroute(self) -> None:
        """The libraries' records through the root logger, where the file (and with -v stderr) is. Again after
        importing or starting one of them: MLflow adds its console handler when first imported."""
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            handlers = self._saved[name][0]
            if any(handler not in handlers for handler in logger.handlers):  # the library's setup, put back on exit
                self._saved[name] = (handlers + [h for h in logger.handlers if h not in handlers], logger.propagate,
                                     logger.level)
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True

    def __exit__(self, kind, exc, _traceback) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            logging.getLogger(CONSOLE_LOGGER).error("the study ended with %s: %s", kind.__name__, exc,
                                                    exc_info=(kind, exc, _traceback))
        self._restore_worker_output()
        logging.captureWarnings(False)
        for name, (handlers, propagate, level) in self._saved.items():
            logger = logging.getLogger(name)
            for handler in (self._sink, self._console):
                if handler is not None:
                    logger.removeHandler(handler)
            for handler in handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            logger.propagate, logger.level = propagate, level
        self._sink.close()

    def open(self, path: Path) -> None:
        """Write from now on to `path` (appended: a resumed study continues its file), records so far first.

        Called again (several benchmarks in one run), it moves from the previous study's file to this one."""
        import mlflow  # noqa: F401  (MLflow gives its loggers console handlers when imported: before rerouting)

        path.parent.mkdir(parents=True, exist_ok=True)
        file = LogFile(path, mode="a", encoding="utf-8")
        file.setFormatter(logging.Formatter(FORMAT))
        file.setLevel(logging.INFO)
        file.handle(logging.makeLogRecord({"name": CONSOLE_LOGGER, "levelno": logging.INFO, "levelname": "INFO",
                                           "msg": f"---- study started (pid {os.getpid()}): "
                                                  f"{' '.join(sys.argv) or 'run_study'}"}))
        previous = self._sink
        for name in (*FILE_ONLY, ""):
            logger = logging.getLogger(name)
            logger.removeHandler(previous)
            logger.addHandler(file)
        if isinstance(previous, logging.handlers.MemoryHandler):
            previous.setTarget(file)
        previous.close()  # flushes the records so far into the file (or ends the previous study's file)
        self._sink, self.path = file, path
        self._reroute()

    def echo(self, progress: Progress) -> Progress:
        """`progress`, with each line also written to the file (only to the file when `progress` is None)."""
        logger = logging.getLogger(CONSOLE_LOGGER)

        def show(message: str) -> None:
            logger.info("%s", message.strip("\n"))
            if progress:
                progress(message)

        return show

    # -- Ray's workers -------------------------------------------------------------------------
    def capture_worker_output(self, session_dir: str | None, remote: bool = False, alert: Progress = None) -> None:
        """After ray.init: what the workers print goes to the file (and, only with -v, to the console).

        Ray forwards the workers' stdout and stderr to the driver, where a handler of its log dispatcher
        prints them; that handler is swapped for one writing to the file. Ray's own (private) dispatcher
        is the only way in; without it the lines stay in Ray's session logs. The autoscaler's warnings and
        errors (e.g. a trial's resources that no node has) also go to `alert`, for the console.
        """
        self._reroute()
        logger = logging.getLogger(WORKER_LOGGER)
        if session_dir:
            where = "on the head node, " if remote else ""
            logger.info("Ray's own logs (every Ray process and worker, stdout and stderr) are %sunder %s/logs",
                        where, session_dir)
        ray_private.remove_worker_output_handler(OUR_PRINTER)
        if not ray_private.add_worker_output_handler(
                OUR_PRINTER, lambda batch: _write_worker_lines(batch, None if self.verbose else alert)):
            return  # another Ray version: the workers' lines stay in Ray's session logs only
        self._capturing = True
        if not self.verbose:
            self._ray_printers = ray_private.remove_worker_output_handler(RAY_PRINTER)

    def _restore_worker_output(self) -> None:
        if not self._capturing:
            return
        ray_private.remove_worker_output_handler(OUR_PRINTER)
        for name, handler in self._ray_printers:
            ray_private.add_worker_output_handler(name, handler)
        self._capturing, self._ray_printers = False, []


class LogFile(logging.FileHandler):
    """The study's log file. A write that fails (a full disk) is said once on stderr, instead of logging's
    traceback for every line; later lines are tried again, so the file continues once there is space."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"warning: cannot write the study's log file {self.baseFilename} "
                             f"({exc.strerror or exc}); its lines are missing from there on\n")

    def close(self) -> None:
        try:
            super().close()  # flushes: fails again on a full disk, after the warning above
        except OSError:
            self.stream = None


def _write_worker_lines(batch: dict[str, Any], alert: Progress) -> None:
    """One batch of forwarded worker output, each line with its process as Ray prints it: (name pid=, ip=).

    Of the autoscaler's periodic status only its events are kept, as Ray's own printer does.
    """
    logger = logging.getLogger(WORKER_LOGGER)
    lines = batch.get("lines", [])
    if batch.get("pid") == "autoscaler":
        events = ray_private.autoscaler_events(lines)
        if events is None:
            return  # its status is in Ray's session logs (monitor.log) too
        lines = list(events)
        for line in lines:
            if alert and ("Warning:" in line or "Error:" in line):
                alert(f"Ray autoscaler: {line.strip()}")
    who = batch.get("actor_name") or batch.get("task_name") or ""
    prefix = f"({who + ' ' if who else ''}pid={batch.get('pid')}, ip={batch.get('ip')})"
    for line in lines:
        logger.info("%s %s", prefix, line)


class StatusTable(ray_private.ReporterWithOutput):
    """Tune's status table (a CLIReporter) written to the study's log file; with `verbose` printed as well.

    A module-level class with plain attributes: Tune pickles its reporter with the experiment.
    """

    def __init__(self, *args, verbose: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.verbose = verbose

    def write_table(self, msg: str) -> None:
        logging.getLogger(TUNE_STATUS_LOGGER).info("Tune's status at %s\n%s", time.strftime("%H:%M:%S"), msg)
        if self.verbose:
            print(msg, flush=True)
