"""Faults around a study, as they happen: a real `mlflow server` stopped mid-study (and restarted, or
not), a storage path that is a file, a search space whose starting point names only some parameters.
Nothing of the trials may be lost, no run may stay RUNNING, no half-made study may block a retry.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow_server import MlflowServer

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
EXPERIMENT = "msdn-synthetic-val"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def server(tmp_path):
    s = MlflowServer(tmp_path)
    s.start()
    yield s
    s.stop()


def start_study(workdir: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log = workdir / "study.log"
    proc = subprocess.Popen(RUN + list(args), cwd=workdir, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=ENV, start_new_session=True)
    return proc, log


def wait_for_checkpoints(workdir: Path, count: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if len(list((workdir / "results" / EXPERIMENT).glob("*/checkpoint_*"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"the study ended early (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {count} checkpoints:\n{log.read_text()[-3000:]}")


def finish(proc: subprocess.Popen, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def server_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    everything = client.search_runs([experiment.experiment_id], max_results=1000)
    return (client, [r for r in everything if r.data.tags.get("msdn.study") == "parent"],
            [r for r in everything if r.data.tags.get("msdn.study") == "trial"])


@pytest.mark.slow
def test_tracking_server_down_for_a_while_mid_study_loses_nothing(tmp_path, server, synthetic_root):
    samples = 6
    proc, log = start_study(tmp_path, "--dataset", "synthetic", "--data-root", str(synthetic_root), "--num-samples",
                            str(samples), "--max-epochs", "4", "--mlflow-uri", server.uri, "--refit-seeds", "1",
                            "--no-baseline")
    wait_for_checkpoints(tmp_path, 2, proc, log)
    server.stop()
    time.sleep(12)  # trials go on meanwhile
    server.start()
    code = finish(proc)
    out = log.read_text()
    assert code == 0, out[-3000:]
    assert "is not answering" in out and "is back after" in out
    client, parents, children = server_runs(server.uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "test_H" in parents[0].data.metrics and parents[0].data.tags["study_state"] == "completed"
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "plots")} >= {
        "plots/optimisation_history.png"}
    assert len({c.data.tags["trial_id"] for c in children}) == samples == len(children)
    for child in children:
        assert child.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "H"))
        assert steps == list(range(1, int(child.data.tags["epochs_trained"]) + 1))  # every epoch, once


@pytest.mark.slow
def test_tracking_server_that_never_comes_back_is_reported_and_the_study_exits_3(tmp_path, server, synthetic_root):
    proc, log = start_study(tmp_path, "--dataset", "synthetic", "--data-root", str(synthetic_root), "--num-samples",
                            "3", "--max-epochs", "2", "--mlflow-uri", server.uri, "--tracking-timeout", "5",
                            "--refit-seeds", "1", "--no-baseline")
    wait_for_checkpoints(tmp_path, 1, proc, log)
    server.stop()
    code = finish(proc)
    out = log.read_text()
    assert code == 3, out[-3000:]
    assert f"the tracking store {server.uri} did not accept" in out and "Not logged" in out
    results = tmp_path / "results" / EXPERIMENT
    assert f"are in {results}" in out
    assert "TEST (refit" in out  # the study itself finished; only the tracking is incomplete
    trial_results = [p for p in results.glob("*/result.json") if p.stat().st_size > 0]
    assert len(trial_results) == 3  # nothing of the trials is lost: Tune's storage has every result


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_storage_path_that_is_a_file_is_refused_before_ray(tmp_path, synthetic_root):
    (tmp_path / "results").write_text("a file where a folder should be\n")
    out = subprocess.run(RUN + ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--storage-path",
                                str(tmp_path / "results" / "sub")], cwd=tmp_path, capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"--storage-path {tmp_path / 'results' / 'sub'}" in out.stderr and "is a file" in out.stderr
    assert "Traceback" not in out.stderr and "Started a local Ray instance" not in out.stdout + out.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "results").read_text() == "a file where a folder should be\n"


@pytest.mark.slow
def test_a_starting_point_naming_some_parameters_runs_with_the_others_sampled(tmp_path, synthetic_root):
    space = tmp_path / "partial.yaml"
    space.write_text("metric: H\nmode: max\nasha: {max_t: 1, grace_period: 1, reduction_factor: 2}\n"
                     "searcher: {seed: 0, start_from_defaults: false, points_to_evaluate: [{lr: 3.0e-4}]}\n"
                     "params:\n  lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-3}\n"
                     "  lambda_dis: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    args = RUN + ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--search-space", str(space),
                  "--num-samples", "2", "--no-refit"]
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    children = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("msdn.study") == "trial"]
    assert len(children) == 2
    first = [c for c in children if c.data.params["lr"] == "0.0003"]
    assert len(first) == 1 and 1e-4 <= float(first[0].data.params["lambda_dis"]) <= 1e-2  # sampled, in range
