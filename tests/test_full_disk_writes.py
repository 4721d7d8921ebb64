"""Writes that meet a full disk, on a real small filesystem (tests/small_fs.py: a tmpfs; skipped where mounting is
refused): a checkpoint (msdn/checkpoint.py, msdn/fsutil.py) and the study's MLflow writer
(msdn/study/tracking/writer.py). And the writer's last try of a run-ending operation at its close deadline.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from small_fs import small_filesystem

from msdn.checkpoint import write_checkpoint
from msdn.fsutil import TMP_MARK
from msdn.study.tracking.store import client, ensure_experiment
from msdn.study.tracking.writer import TrackingWriter

REPO = Path(__file__).resolve().parents[1]
FILLER = "filler"


def fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of `folder` until `leave` bytes are free."""
    free = shutil.disk_usage(folder).free
    with open(folder / FILLER, "wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))


def test_a_checkpoint_on_a_full_disk_is_enospc_naming_it_and_leaves_no_file(tmp_path):
    with small_filesystem(tmp_path / "small", "1m") as small:
        final = small / "run.pt"
        final.write_bytes(b"the previous checkpoint")
        fill(small, 64 * 1024)
        with pytest.raises(OSError) as err:
            write_checkpoint(final, {"model": torch.zeros(200_000)})  # 800 KB
        assert err.value.errno == 28 and err.value.filename == str(final)
        assert final.read_bytes() == b"the previous checkpoint"  # the old file untouched
        assert sorted(p.name for p in small.iterdir()) == [FILLER, "run.pt"]  # no temporary file left
        assert not any(TMP_MARK in p.name for p in small.iterdir())


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_msdn_train_checkpoint_on_a_full_disk_is_one_error_naming_the_file(tmp_path, synthetic_root):
    with small_filesystem(tmp_path / "small", "1m") as small:
        fill(small, 16 * 1024)
        target = small / "run.pt"
        start = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "msdn.train", "--dataset", "synthetic", "--data-root",
                              str(synthetic_root), "--epochs", "1", "--device", "cpu", "--checkpoint", str(target)],
                             capture_output=True, text=True, timeout=300, cwd=REPO)
        assert out.returncode == 2, out.stderr[-3000:]
        assert out.stderr.strip().splitlines()[-1] == f"error: {target}: No space left on device"
        assert "Traceback" not in out.stderr and time.monotonic() - start < 120
        assert sorted(p.name for p in small.iterdir()) == [FILLER]  # no partial checkpoint


def test_a_full_mlflow_store_gives_up_what_needs_space_and_still_ends_the_run(tmp_path):
    with small_filesystem(tmp_path / "store", "8m") as folder:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        c = client(uri)
        run_id = c.create_run(ensure_experiment(uri, "full")).info.run_id
        big = tmp_path / "plot.bin"
        big.write_bytes(os.urandom(1 << 20))
        fill(folder, 64 * 1024)  # room for a row, not for the artifact
        said: list[str] = []
        writer = TrackingWriter(uri, progress=said.append)
        writer.submit("the plots of the parent run", lambda c: c.log_artifact(run_id, str(big), "plots"))
        writer.submit("metrics", lambda c: c.log_metric(run_id, "H", 0.5))
        writer.submit("ending the parent run as FINISHED", lambda c: c.set_terminated(run_id, "FINISHED"), final=True)
        start = time.monotonic()
        assert writer.close(60) == ["the plots of the parent run"]  # not logged: given up, not retried
        assert time.monotonic() - start < 30
        run = c.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["H"] == 0.5  # what came after it was logged
        where = f"the MLflow store's folder {folder} (its database and its artifacts in {folder / 'mlartifacts'})"
        assert len(said) == 1 and where in said[0] and "is on a full filesystem" in said[0]
        assert writer.last_error.startswith("no space left on device") and writer.dropped == []


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_a_run_ending_operation_is_tried_once_more_at_the_close_deadline(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = client(uri).create_run(ensure_experiment(uri, "stuck")).info.run_id
    writer = TrackingWriter(uri, progress=None)

    def stuck(_client) -> None:  # an upload that times out every time
        raise TimeoutError("read timed out")

    writer.submit("the refit checkpoints", stuck)
    writer.submit("metrics", lambda c: c.log_metric(run_id, "H", 0.5))
    writer.submit("ending the parent run as KILLED", lambda c: c.set_terminated(run_id, "KILLED"), final=True)
    assert writer.close(2.0) == ["the refit checkpoints", "metrics"]  # in order, the final one out of turn
    run = client(uri).get_run(run_id)
    assert run.info.status == "KILLED" and "H" not in run.data.metrics
    assert "read timed out" in writer.last_error
