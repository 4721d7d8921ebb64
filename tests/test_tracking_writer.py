"""The MLflow writer: operations run in order on its thread, outages are retried, refusals dropped,
and what could not be logged by the deadline is returned. Real MLflow client, fake operations."""
from __future__ import annotations

import threading
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from msdn.study.tracking.writer import TrackingWriter, is_permanent


def make_writer(tmp_path) -> TrackingWriter:
    return TrackingWriter(f"sqlite:///{tmp_path / 'mlflow.db'}", progress=None)


def test_operations_run_in_order_on_the_writer_thread(tmp_path):
    writer = make_writer(tmp_path)
    done, threads = [], set()
    for i in range(20):
        writer.submit(f"op {i}", lambda _c, i=i: (done.append(i), threads.add(threading.current_thread().name)))
    assert writer.flush(30)
    assert done == list(range(20)) and threads == {"mlflow-writer"}
    assert writer.close(5) == []


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_an_outage_is_retried_in_order_until_the_store_answers(tmp_path):
    writer = make_writer(tmp_path)
    failures = {"left": 3}
    done = []

    def flaky(_client) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("connection refused")
        done.append("flaky")

    writer.submit("flaky", flaky)
    writer.submit("after", lambda _c: done.append("after"))
    assert writer.flush(30)
    assert done == ["flaky", "after"] and failures["left"] == 0  # the second waited for the first
    assert writer.close(5) == [] and writer.dropped == []


def test_a_refused_operation_is_dropped_and_reported_the_rest_goes_on(tmp_path):
    writer = make_writer(tmp_path)
    done = []

    def refused(_client) -> None:
        raise MlflowException("param lr already logged with another value", error_code=databricks_pb2.INVALID_PARAMETER_VALUE)

    writer.submit("changing a param", refused)
    writer.submit("metrics", lambda _c: done.append("metrics"))
    assert writer.flush(30) and done == ["metrics"]
    assert len(writer.dropped) == 1 and "changing a param" in writer.dropped[0]
    assert "already logged" in writer.dropped[0]


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_close_returns_what_a_store_that_never_answers_did_not_take(tmp_path):
    writer = make_writer(tmp_path)

    def down(_client) -> None:
        raise ConnectionError("connection refused")

    writer.submit("epoch 1 of trial t1", down)
    writer.submit("ending the parent run as FINISHED", lambda _c: None)
    deadline = time.monotonic() + 60
    while writer.last_error is None and time.monotonic() < deadline:  # the first attempt has failed
        time.sleep(0.05)
    assert not writer.flush(1.0)
    assert writer.close(1.0) == ["epoch 1 of trial t1", "ending the parent run as FINISHED"]
    assert "connection refused" in writer.last_error


def test_permanent_errors_are_told_from_outages():
    assert is_permanent(MlflowException("x", error_code=databricks_pb2.RESOURCE_ALREADY_EXISTS))
    assert not is_permanent(MlflowException("API request failed", error_code=databricks_pb2.INTERNAL_ERROR))
    assert not is_permanent(ConnectionError("refused"))
