"""The MLflow tracking store: checking the URI early, the client, and batched logging helpers.

MLflow is imported inside the functions, so `resolve_options` can check a URI cheaply.
"""
from __future__ import annotations

import contextlib
import re
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable

# Tags that tie a study's runs together.
STUDY_TAG = "msdn.study"  # "parent" on the study's run, "trial" on each trial's run
STORAGE_TAG = "msdn.storage"  # the Tune experiment path of the study (finds the parent on --resume)
TRIAL_STATE_TAG = "trial_state"
TRIAL_ID_TAG = "trial_id"
PARENT_TAG = "mlflow.parentRunId"
SQLITE_HEADER = b"SQLite format 3\x00"
ARTIFACTS_FOLDER = "mlartifacts"  # beside a SQLite store's file: its experiments' artifacts (as `mlflow server`'s)


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used."""


def default_tracking_uri(workdir: str | Path = ".") -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before Ray starts, when the tracking store is unreachable or unusable."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"HTTP {response.status}")
        except (urllib.error.URLError, OSError, TrackingError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"--mlflow-uri {uri}: the MLflow tracking server does not answer ({reason}) at {url}. "
                f"Expected a running `mlflow server` reachable from this machine (for example "
                f"`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`), "
                f"or leave --mlflow-uri out to use a SQLite file in the working directory."
            ) from None
        return
    if uri.startswith("sqlite:///"):
        check_sqlite_store(uri, sqlite_path(uri))
        return
    if uri.startswith(("file:", "/")) or "://" not in uri:
        return
    raise TrackingError(f"--mlflow-uri {uri}: expected sqlite:///PATH, a folder, or an http(s):// tracking server")


def sqlite_path(uri: str) -> Path:
    """The database file of a sqlite:/// URI (relative to the working directory unless absolute)."""
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def check_sqlite_store(uri: str, path: Path) -> None:
    """A SQLite store must be one MLflow can open and write, checked without changing anything stored.

    The file, if there, must be an undamaged SQLite database that is MLflow's (never another program's:
    MLflow would add its tables to it) with the schema this MLflow expects; it and its folder must be
    writable. Reads use a read-only connection; the write test is a transaction that is rolled back, so the
    file stays byte-identical. A missing file is created by MLflow on first use: its folder must be writable.
    """
    flag = f"--mlflow-uri {uri}"
    folder = path.resolve().parent
    if not folder.is_dir():
        raise TrackingError(f"{flag}: the folder {path.parent} does not exist; expected an existing folder "
                            f"for the SQLite file (it is created on first use).")
    if path.is_dir():
        raise TrackingError(f"{flag}: {path} is a folder; expected an MLflow SQLite file there, or no file (it is "
                            f"created on first use)")
    if not path.exists():
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            raise TrackingError(f"{flag}: cannot create {path} ({exc.strerror or exc}); expected a folder this user "
                                f"can write to, for the SQLite file MLflow creates there") from None
        return
    unchanged = "The file was left unchanged."
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise TrackingError(f"{flag}: cannot read {path} ({exc.strerror or exc}); expected a readable MLflow "
                            f"SQLite file") from None
    if header and header != SQLITE_HEADER:
        raise TrackingError(f"{flag}: {path} is not an SQLite database (it does not begin with SQLite's header); "
                            f"expected an MLflow SQLite store, or a path where none exists yet. {unchanged}")
    if header:
        _check_sqlite_contents(uri, path, unchanged)
    _check_sqlite_writable(flag, path, unchanged)


def _check_sqlite_contents(uri: str, path: Path, unchanged: str) -> None:
    """Undamaged (SQLite's quick_check), MLflow's own tables, and the schema this MLflow expects; read-only."""
    flag = f"--mlflow-uri {uri}"
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(check[0] if check else "no answer")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = (db.execute("SELECT version_num FROM alembic_version").fetchone() or [None])[0] \
                if "alembic_version" in tables else None
    except sqlite3.DatabaseError as exc:  # also "file is not a database", "database disk image is malformed"
        raise TrackingError(f"{flag}: {path} is damaged ({_first_line(exc)}); expected an undamaged MLflow "
                            f"SQLite store. Restore it from a backup, or choose another file. {unchanged}") from None
    if tables and "experiments" not in tables:
        shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
        raise TrackingError(f"{flag}: {path} is an SQLite database of something else (tables {shown}); expected an "
                            f"MLflow store (MLflow would add its tables to this file), or a path where none exists "
                            f"yet. {unchanged}")
    expected = _mlflow_schema() if version else None
    if expected and version != expected:
        import mlflow

        raise TrackingError(f"{flag}: {path} holds an MLflow store of another version (schema {version}; MLflow "
                            f"{mlflow.__version__} here expects {expected}). Back it up and run `mlflow db upgrade "
                            f"{uri}` if it is older, or use the MLflow that wrote it. {unchanged}")


def _check_sqlite_writable(flag: str, path: Path, unchanged: str) -> None:
    """A write that is rolled back: needs the file writable and its folder too (SQLite's journal goes there)."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("CREATE TABLE msdn_write_probe (x INTEGER)")
            finally:
                db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return  # another process is writing to it right now: a store that can be written
        raise TrackingError(f"{flag}: {path} cannot be written ({_first_line(exc)}: the file or its folder "
                            f"{path.resolve().parent} is read-only, by permissions, an immutable attribute or a "
                            f"read-only filesystem); expected a store this user can write to, file and folder (SQLite "
                            f"writes its journal beside the file). {unchanged}") from None
    except sqlite3.DatabaseError as exc:
        raise TrackingError(f"{flag}: {path} is damaged ({_first_line(exc)}); expected an undamaged MLflow SQLite "
                            f"store. {unchanged}") from None


def _mlflow_schema() -> str | None:
    """The schema revision this MLflow writes (MLflow 3.17's private `_get_latest_schema_revision`), or None."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:  # a private helper: without it the schema is left to MLflow's own check
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of the experiment `name`, created (or restored from deleted) when needed.

    A new experiment of a SQLite store keeps its artifacts beside the store (`artifact_location`), not in the
    `./mlruns` of whatever folder the study was started from (MLflow's default for a SQLite store).
    """
    c = client(uri)
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            c.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return c.create_experiment(name, artifact_location=artifact_location(uri, name))


def artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment of the store `uri` keeps its artifacts: for SQLite, a folder of its own under
    ARTIFACTS_FOLDER beside the database file (the experiment's name, made path-safe, and a random suffix, so
    a name can neither leave that folder nor meet the artifacts of a deleted namesake); None (the store's own
    default) for a tracking server, which decides that itself."""
    if not uri.startswith("sqlite:///"):
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-")[:80] or "experiment"
    return (sqlite_path(uri).resolve().parent / ARTIFACTS_FOLDER / f"{slug}-{uuid.uuid4().hex[:8]}").as_uri()


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    """Every run whose parent is `parent_run_id` (the study's trial runs)."""
    return client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=5000
    )


def log_metrics(c, run_id: str, metrics: dict[str, float], step: int) -> None:
    """All of `metrics` at one step, in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


def log_params_flat(c, run_id: str, params: dict[str, Any], prefix: str = "") -> None:
    """Log the params the run does not have yet (MLflow refuses to change a logged param)."""
    from mlflow.entities import Param

    existing = c.get_run(run_id).data.params
    new = [Param(prefix + k, str(v)) for k, v in sorted(params.items()) if prefix + k not in existing]
    for i in range(0, len(new), 100):
        c.log_batch(run_id, params=new[i:i + 100])


def log_artifacts(c, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    for path in paths:
        c.log_artifact(run_id, str(path), artifact_path)
