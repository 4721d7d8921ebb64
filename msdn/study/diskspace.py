"""A full disk during a study: which of its locations filled up, in one paragraph (exit 2), and a prompt stop.

"No space left on device" reaches a study from many writers: a trial's checkpoint (in a Ray worker), Tune's
experiment state, the Optuna journal, the MLflow SQLite store, the log file. Most of these errors carry no
file name, and several come wrapped in Ray's or SQLAlchemy's exceptions. So the study names the place
instead: whichever of its write locations (--storage-path, the MLflow SQLite file's folder, the temporary
folder where Ray stages checkpoints) now has almost no space left, with its free and total bytes.

- `DiskGuard`, a Tune callback, ends the study at the first trial that failed for want of space, instead
  of retrying it and failing every trial after it.
- `disk_full_error(opts, exc)` turns such a failure into a `DiskFullError` (a StudyError: exit 2) that
  names the full location and says how to continue: free space, then the same command with --resume
  (Tune keeps its state and each trial's last complete checkpoint; `searcher.check_journal` drops an
  Optuna journal entry that the full disk cut short).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from msdn.cli import DISK_FULL_TEXT, is_disk_full
from msdn.study.options import StudyError, StudyOptions, is_uri

LOW_SPACE_BYTES = 4 << 20  # less than this left counts as full (filesystems refuse writes before 0 bytes)
TRACKING_WAIT_S = 10.0  # how long a study that ended on a full disk still waits for MLflow to take its last lines


class DiskFullError(StudyError):
    """The study stopped because a filesystem it writes to is full."""


def study_locations(opts: StudyOptions) -> list[tuple[str, Path]]:
    """Where a study writes on this machine: (what, path)."""
    places = []
    if not is_uri(opts.storage_path):
        places.append(("--storage-path", Path(opts.storage_path)))
    if (opts.mlflow_uri or "").startswith("sqlite:///"):
        from msdn.study.tracking.store import sqlite_path

        places.append((f"the MLflow store (--mlflow-uri {opts.mlflow_uri})", sqlite_path(opts.mlflow_uri).parent))
    places.append(("the temporary folder (Ray's session and checkpoint staging)", Path(tempfile.gettempdir())))
    return places


def _usage(path: Path) -> tuple[int, int] | None:
    """(free, total) bytes of the filesystem holding `path` (or its nearest existing parent)."""
    for candidate in (path, *path.resolve().parents):
        if candidate.exists():
            try:
                usage = shutil.disk_usage(candidate)
            except OSError:
                return None
            return usage.free, usage.total
    return None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def disk_full_message(opts: StudyOptions, exc: BaseException | None = None, cause: str | None = None) -> str:
    """Which of the study's locations is full (free of total), and how to continue; `cause`: what failed."""
    full, checked = [], []
    for what, path in study_locations(opts):
        usage = _usage(path)
        if usage is None:
            continue
        free, total = usage
        checked.append(f"{what} {path}: {_size(free)} free")
        if free < LOW_SPACE_BYTES:
            full.append(f"{what} {path} is on a full filesystem ({_size(free)} free of {_size(total)})")
    filename = _filename(exc)
    if cause is None and filename:
        cause = f"writing {filename}"
    where = "; ".join(full) if full else (
        f"none of the study's locations is full now ({'; '.join(checked)}), so space was freed meanwhile or a quota "
        f"was reached")
    return (f"no space left on device{f' ({cause})' if cause else ''}: {where}. The study stopped; what it "
            f"stored is kept (Tune's state, each trial's last complete checkpoint, the Optuna journal, the MLflow runs "
            f"closed as FAILED where the store could still be written). Free space there, or use another location "
            f"only for a new study, then continue this one with the same command plus --resume.")


def _filename(exc: BaseException | None) -> str | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.filename:
            return str(exc.filename)
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def disk_full_error(opts: StudyOptions, exc: BaseException) -> DiskFullError | None:
    """A DiskFullError for a study that ended with `exc`, when `exc` is a full disk; None otherwise."""
    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, KeyboardInterrupt) or not is_disk_full(exc):
        return None
    return DiskFullError(disk_full_message(opts, exc))


def error_text(trial) -> str:
    """The end of a Tune trial's error file (the driver's local copy), or ''."""
    path = getattr(trial, "error_file", None)
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-20_000:]
    except OSError:
        return ""


def disk_guard(opts: StudyOptions):
    """A Tune callback that ends the study (DiskFullError out of `Tuner.fit`) at the first trial that failed for
    want of disk space: retrying it, or starting the next trial, would only fail the same way."""
    from ray.tune import Callback

    class DiskGuard(Callback):
        def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
            self._check(trial)

        def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
            self._check(trial)

        def _check(self, trial) -> None:
            text = error_text(trial)
            if DISK_FULL_TEXT.search(text):
                raise DiskFullError(disk_full_message(opts, cause=f"trial {trial.trial_id} failed: {_last_line(text)}"))

        def __reduce__(self):  # Tune pickles callbacks with the experiment; a resumed study adds its own
            return (_no_callback, ())

    return DiskGuard()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if DISK_FULL_TEXT.search(line)]
    line = lines[-1] if lines else text.strip().splitlines()[-1]
    return line if len(line) <= 200 else line[:199] + "…"


def _no_callback():
    from ray.tune import Callback

    return Callback()
