"""Stores a study cannot use, as they happen: real read-only, damaged and foreign MLflow SQLite files, and a
real small filesystem that fills up under --storage-path (msdn/study/tracking/store.py, msdn/study/diskspace.py).

Each refusal: exit 2, one `error:` naming the file and what was expected, no traceback, in seconds, before
Ray starts, and every file byte-identical afterwards. Read-only is made root-proof where the tests run as
root (an immutable file, `chattr +i`; a read-only bind mount); a test skips, saying why, where neither
works. The full-disk study (slow tier) runs on a tmpfs of a few MiB and skips where mounting is refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from small_fs import grow, small_filesystem

from msdn.study import tracking
from msdn.study.tracking.store import ARTIFACTS_FOLDER, check_tracking_uri, ensure_experiment

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
ENV = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1"}
EXPERIMENT = "msdn-synthetic-val"


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Path:
    """A real MLflow SQLite store with one experiment and one finished run (copied by each test)."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = tracking.client(uri)
    run = client.create_run(client.create_experiment("earlier"))
    client.log_metric(run.info.run_id, "H", 0.5)
    client.set_terminated(run.info.run_id)
    return folder / "mlflow.db"


def refused(path: Path, *needles: str) -> str:
    """check_tracking_uri refuses `path` in seconds, naming it and `needles`, and leaves it unchanged."""
    before = digest(path) if path.is_file() else None
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError) as err:
        check_tracking_uri(f"sqlite:///{path}")
    message = str(err.value)
    assert time.monotonic() - start < 10
    assert message.startswith(f"--mlflow-uri sqlite:///{path}: ") and str(path) in message and "\n" not in message
    for needle in needles:
        assert needle in message, message
    if before is not None:
        assert digest(path) == before  # byte-identical, not even touched
    return message


@contextlib.contextmanager
def immutable(path: Path):
    """`path` made unwritable for root too (`chattr +i`), or for its owner (chmod) when not root."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip(f"running as root and `chattr +i {path}` is not possible here: no root-proof read-only file")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def read_only_mount(folder: Path):
    """`folder` seen through a read-only bind mount (root), or a folder without write permission (not root)."""
    view = folder.with_name(folder.name + "-ro")
    view.mkdir()
    if os.geteuid() != 0:
        shutil.rmtree(view)
        with immutable(folder):
            yield folder
        return
    if subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True).returncode:
        pytest.skip(f"`mount --bind` is refused here: no read-only filesystem for the test ({view})")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True).returncode:
            pytest.skip("remounting a bind mount read-only is refused here")
        yield view
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)
        view.rmdir()


# ----------------------------------------------------------------------------- the SQLite store


def test_a_healthy_store_and_a_new_file_are_accepted(real_store, tmp_path):
    before = digest(real_store)
    check_tracking_uri(f"sqlite:///{real_store}")
    assert digest(real_store) == before  # the write test was rolled back
    check_tracking_uri(f"sqlite:///{tmp_path / 'new.db'}")
    assert not (tmp_path / "new.db").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "empty.db").touch()  # an empty file is an empty SQLite database: MLflow initialises it
    check_tracking_uri(f"sqlite:///{tmp_path / 'empty.db'}")
    assert (tmp_path / "empty.db").read_bytes() == b""


def test_garbage_bytes_are_not_a_store(tmp_path):
    path = tmp_path / "mlflow.db"
    path.write_bytes(os.urandom(100_000))
    refused(path, "is not an SQLite database", "expected an MLflow SQLite store", "left unchanged")


def test_a_truncated_store_is_damaged(real_store, tmp_path):
    path = tmp_path / "mlflow.db"
    path.write_bytes(real_store.read_bytes()[: real_store.stat().st_size // 2])
    refused(path, "is damaged (database disk image is malformed)", "Restore it from a backup")


def test_another_programs_database_is_never_given_mlflow_tables(tmp_path):
    import sqlite3

    path = tmp_path / "inventory.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE parts (id INTEGER, name TEXT)")
        db.commit()
    refused(path, "an SQLite database of something else (tables parts)", "MLflow would add its tables")


def test_a_store_of_another_mlflow_schema(real_store, tmp_path):
    import sqlite3

    path = tmp_path / "mlflow.db"
    shutil.copyfile(real_store, path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE alembic_version SET version_num = 'a0000000old'")
        db.commit()
    refused(path, "another version (schema a0000000old", f"mlflow db upgrade sqlite:///{path}")


def test_a_read_only_store_file(real_store, tmp_path):
    path = tmp_path / "mlflow.db"
    shutil.copyfile(real_store, path)
    with immutable(path):
        refused(path, "cannot be written (attempt to write a readonly database", "expected a store this user can "
                "write to")


def test_a_store_in_a_read_only_folder(real_store, tmp_path):
    folder = tmp_path / "stores"
    folder.mkdir()
    shutil.copyfile(real_store, folder / "mlflow.db")
    with read_only_mount(folder) as view:
        refused(view / "mlflow.db", "cannot be written")
        message = refused(view / "new.db", "cannot create")
        assert not (view / "new.db").exists() and "expected a folder this user can write to" in message
    assert sorted(p.name for p in folder.iterdir()) == ["mlflow.db"]  # no journal, no probe left behind


def test_a_folder_where_the_file_should_be(tmp_path):
    (tmp_path / "mlflow.db").mkdir()
    refused(tmp_path / "mlflow.db", "is a folder")


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_a_damaged_store_as_a_user_is_refused_before_ray(real_store, tmp_path, synthetic_root):
    path = tmp_path / "mlflow.db"
    path.write_bytes(real_store.read_bytes()[:200_000])
    before = digest(path)
    start = time.monotonic()
    out = subprocess.run(RUN + ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--mlflow-uri",
                                f"sqlite:///{path}"], cwd=tmp_path, capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{path} is damaged" in errors[0]
    assert "Traceback" not in out.stderr and "Started a local Ray" not in out.stdout + out.stderr
    assert time.monotonic() - start < 120 and digest(path) == before


def test_artifacts_stay_beside_the_store_whatever_the_working_folder(tmp_path, monkeypatch):
    folder = tmp_path / "mlflow stores ü"  # a space and a non-ASCII letter in the path
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment_id = ensure_experiment(uri, "../../escape/ä study")
    client = tracking.client(uri)
    location = client.get_experiment(experiment_id).artifact_location
    assert location.startswith((folder / ARTIFACTS_FOLDER).as_uri() + "/escape-study-")
    run = client.create_run(experiment_id)
    plot = tmp_path / "a plot ü.txt"
    plot.write_text("x")
    client.log_artifact(run.info.run_id, str(plot), "plots")
    stored = list((folder / ARTIFACTS_FOLDER).rglob("a plot ü.txt"))
    assert len(stored) == 1 and stored[0].parent.name == "plots" and run.info.run_id in stored[0].parts
    assert not (elsewhere / "mlruns").exists() and list(elsewhere.iterdir()) == []
    assert ensure_experiment(uri, "../../escape/ä study") == experiment_id  # an existing one keeps its location


# ----------------------------------------------------------------------------- a full disk


def test_what_a_full_disk_looks_like_through_the_libraries():
    from msdn.cli import is_disk_full

    inner = OSError(28, "No space left on device")
    try:
        try:
            raise inner
        except OSError as exc:
            raise RuntimeError("Tune could not save its state") from exc
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert is_disk_full(Exception("sqlite3.OperationalError: database or disk is full"))
    assert is_disk_full(Exception("OSError: [Errno 28] Error writing bytes to file"))
    assert is_disk_full(RuntimeError("Unable to flush file (file write failed: errno = 28, error message = 'No space "
                                     "left on device')"))  # h5py
    assert not is_disk_full(OSError(13, "Permission denied")) and not is_disk_full(None)


def test_a_cut_journal_entry_is_dropped_so_the_journal_stays_readable(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from msdn.study.searcher import drop_cut_entry

    path = tmp_path / "optuna_study.journal"
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="s")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    whole = path.read_bytes()
    assert drop_cut_entry(path) is False and path.read_bytes() == whole
    path.write_bytes(whole + b'{"op_code":5,"worker_id":"w","trial_id":3,"par')  # a write the full disk cut off
    assert drop_cut_entry(path) is True and path.read_bytes() == whole
    resumed = optuna.load_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="s")
    resumed.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)  # appends after a whole line
    assert len(optuna.load_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="s").trials) == 4


def test_the_log_file_on_a_full_disk_says_so_once(tmp_path, capsys):
    import logging

    from msdn.study.logs import LogFile

    with small_filesystem(tmp_path / "small", "64k") as folder:
        with open(folder / "filler", "wb") as f, contextlib.suppress(OSError):
            f.write(b"x" * (1 << 20))  # fills it
        handler = LogFile(folder / "study.log", mode="a", encoding="utf-8")
        logger = logging.getLogger(f"test.{uuid.uuid4().hex}")
        logger.propagate, logger.handlers = False, [handler]
        for n in range(50):
            logger.error("line %d %s", n, "y" * 200)
        handler.close()
        err = capsys.readouterr().err
        assert err.count("warning: cannot write the study's log file") == 1 and "Traceback" not in err
        assert str(folder / "study.log") in err and "No space left on device" in err


@pytest.mark.slow
def test_a_full_storage_path_stops_the_study_and_resume_continues_after_space_is_freed(tmp_path, synthetic_root):
    args = RUN + ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--storage-path",
                  str(tmp_path / "small" / "results"), "--num-samples", "4", "--max-epochs", "4", "--refit-seeds", "1",
                  "--no-baseline"]
    with small_filesystem(tmp_path / "small", "4m") as small:
        start = time.monotonic()
        out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=600)
        seconds = time.monotonic() - start
        assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, out.stderr[-3000:]
        assert errors[0].startswith("error: no space left on device")
        assert f"--storage-path {small / 'results'} is on a full filesystem" in errors[0] and "--resume" in errors[0]
        assert "Traceback" not in out.stderr and "Logging error" not in out.stderr and seconds < 300
        assert out.stderr.count("warning:") <= 1  # the log file's one line, at most
        grow(small, "300m")  # space freed
        out = subprocess.run(args + ["--resume"], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "4 trials:" in out.stdout and "errored" not in out.stdout.split("4 trials:")[-1].splitlines()[0]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("msdn.study") == "trial"]
    assert len({r.data.tags["trial_id"] for r in trials}) == len(trials) == 4  # each trial once
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]


@pytest.mark.slow
def test_a_study_with_spaces_and_non_ascii_in_every_path(tmp_path, synthetic_root):
    odd = tmp_path / "da ta ü"
    shutil.copytree(synthetic_root, odd / "data root")
    (odd / "ml flow").mkdir()
    space = odd / "space ü.yaml"
    shutil.copyfile(REPO / "search_spaces" / "synthetic.yaml", space)
    uri = f"sqlite:///{odd / 'ml flow' / 'mlflow.db'}"
    out = subprocess.run(RUN + ["--dataset", "synthetic", "--data-root", str(odd / "data root"), "--storage-path",
                                str(odd / "re sults"), "--mlflow-uri", uri, "--search-space", str(space),
                                "--num-samples", "2", "--max-epochs", "2", "--refit-seeds", "1", "--no-baseline"],
                         cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (odd / "re sults" / EXPERIMENT / "best_config.yaml").is_file()
    client = tracking.client(uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # parent, 2 trials, 1 refit
    parent = next(r for r in runs if r.data.tags.get("msdn.study") == "parent")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"best_config.yaml", "plots"}
    assert list((odd / "ml flow" / ARTIFACTS_FOLDER).rglob("best_config.yaml"))  # beside the store
    assert not (tmp_path / "mlruns").exists()
