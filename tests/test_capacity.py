"""Requests a Ray cluster can never meet (msdn/study/capacity.py) and addresses where no cluster answers
(msdn/study/cluster.py `check_ray_address`): refused in seconds, before any trial or MLflow run.

Fast tier: the decision and its message on node lists, the launcher YAML's node types, the address probe
against real sockets, and `tune/run.py --address <nothing>` as a user runs it. Slow tier: a real local Ray
asked for more CPUs than it has, and a real two-node cluster (joined with --address) asked the same.
"""
from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow_server import free_port

from msdn.study import capacity
from msdn.study.capacity import NodeShape, check_trial_fits, launcher_node_types
from msdn.study.cluster import check_ray_address
from msdn.study.options import StudyError

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
ENV = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1"}


def cluster(monkeypatch, live: list[NodeShape], types: list[NodeShape] | None) -> None:
    """What Ray would report: the live nodes, and the autoscaler's node types (None: not visible)."""
    monkeypatch.setattr(capacity, "live_nodes", lambda: list(live))
    monkeypatch.setattr(capacity, "autoscaler_node_types", lambda: types)


def refusal(resources: dict[str, float], joined: bool = False) -> str:
    with pytest.raises(StudyError) as err:
        check_trial_fits(resources, joined=joined, progress=None)
    return str(err.value)


# ----------------------------------------------------------------------------- what a cluster can ever offer


def test_more_cpus_than_the_largest_node_is_refused_naming_the_flag(monkeypatch):
    cluster(monkeypatch, [NodeShape("node 10.0.0.1", 2, 0)], None)
    message = refusal({"cpu": 64, "gpu": 0})
    assert message.startswith("--cpus-per-trial 64: no node of this Ray cluster can ever hold one trial")
    assert "the largest node has 2 CPUs and 0 GPUs" in message and "Expected --cpus-per-trial <= 2" in message
    assert "--gpus-per-trial" not in message and "\n" not in message


def test_a_gpu_share_on_a_cluster_without_gpus_names_the_gpu_flag(monkeypatch):
    cluster(monkeypatch, [NodeShape("node a", 8, 0), NodeShape("node b", 4, 0)], None)
    message = refusal({"cpu": 1, "gpu": 0.5})
    assert message.startswith("--gpus-per-trial 0.5:") and "--cpus-per-trial 1:" not in message
    assert "2 live nodes: node a 8 CPUs, 0 GPUs; node b 4 CPUs, 0 GPUs" in message
    assert "Expected --gpus-per-trial <= 0" in message and "such as 0.5" in message


def test_cpus_and_gpus_that_no_single_node_has_together(monkeypatch):
    cluster(monkeypatch, [NodeShape("node cpu", 16, 0), NodeShape("node gpu", 2, 1)], None)
    message = refusal({"cpu": 4, "gpu": 1})
    assert message.startswith("--cpus-per-trial 4 with --gpus-per-trial 1: no node")
    assert "a CPU and GPU share that one node holds together" in message
    check_trial_fits({"cpu": 2, "gpu": 1}, joined=False, progress=None)  # fits the GPU node


def test_a_node_type_the_autoscaler_may_start_is_enough(monkeypatch):
    # The launcher YAML's cluster right after `ray up`: the head only (no CPUs for trials), GPU workers on demand.
    head, worker = NodeShape("node type head", 0, 0), NodeShape("node type gpu_worker", 4, 1)
    cluster(monkeypatch, [NodeShape("node head", 0, 0)], [head, worker])
    check_trial_fits({"cpu": 1, "gpu": 0.5}, joined=True, progress=None)  # no wait: the autoscaler starts one
    message = refusal({"cpu": 8, "gpu": 1}, joined=True)
    assert "the node types its autoscaler may start offer: node type head 0 CPUs, 0 GPUs; node type gpu_worker 4 " \
           "CPUs, 1 GPUs" in message and "Expected --cpus-per-trial <= 4" in message


def test_a_joined_cluster_with_unknown_node_types_waits_a_bounded_time(monkeypatch):
    cluster(monkeypatch, [NodeShape("node head", 2, 0)], None)
    monkeypatch.setenv(capacity.NODE_WAIT_ENV, "1")
    said: list[str] = []
    start = time.monotonic()
    with pytest.raises(StudyError) as err:
        check_trial_fits({"cpu": 64, "gpu": 0}, joined=True, progress=said.append)
    assert 1 <= time.monotonic() - start < 10
    assert "no such node joined within 1 s" in str(err.value) and capacity.NODE_WAIT_ENV in str(err.value)
    assert len(said) == 1 and "waiting up to 1 s" in said[0]
    monkeypatch.setenv(capacity.NODE_WAIT_ENV, "0")
    start = time.monotonic()
    assert "within 0 s" in refusal({"cpu": 64, "gpu": 0}, joined=True) and time.monotonic() - start < 1
    monkeypatch.setenv(capacity.NODE_WAIT_ENV, "inf")
    assert refusal({"cpu": 64, "gpu": 0}, joined=True).startswith(f"{capacity.NODE_WAIT_ENV}=inf: expected a finite")


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_a_node_that_joins_during_the_wait_ends_it(monkeypatch):
    joined_at = time.monotonic() + 1.5
    monkeypatch.setattr(capacity, "live_nodes", lambda: [NodeShape("node head", 2, 0)] + (
        [NodeShape("node gpu", 8, 1)] if time.monotonic() >= joined_at else []))
    monkeypatch.setattr(capacity, "autoscaler_node_types", lambda: None)
    monkeypatch.setenv(capacity.NODE_WAIT_ENV, "30")
    start = time.monotonic()
    check_trial_fits({"cpu": 4, "gpu": 1}, joined=True, progress=None)
    assert time.monotonic() - start < 10


def test_launcher_yaml_node_types():
    assert launcher_node_types(REPO / "tune" / "cluster" / "gpu-cluster.yaml") == [
        NodeShape("node type head", 0, 0), NodeShape("node type gpu_worker", 4, 1)]


def test_launcher_config_that_does_not_say_is_unknown(tmp_path):
    path = tmp_path / "ray_bootstrap_config.yaml"
    assert launcher_node_types(path) is None  # no launcher config on this node
    path.write_text("max_workers: 2\nhead_node_type: head\navailable_node_types:\n"
                    "  head: {resources: {CPU: 2}}\n  big: {resources: {CPU: 96, GPU: 8}, max_workers: 0}\n"
                    "  small: {resources: {CPU: 8}}\n")
    assert launcher_node_types(path) == [NodeShape("node type head", 2, 0), NodeShape("node type small", 8, 0)]
    path.write_text("available_node_types:\n  worker: {node_config: {InstanceType: m5.large}}\n")
    assert launcher_node_types(path) is None  # resources not written down: it might hold anything
    path.write_bytes(b"\xff\xfe not yaml")
    assert launcher_node_types(path) is None


# ----------------------------------------------------------------------------- an address where nothing answers


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def probe_refusal(address: str) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(StudyError) as err:
        check_ray_address(address)
    return str(err.value), time.monotonic() - start


def test_address_where_nothing_listens_is_refused_at_once():
    address = f"127.0.0.1:{free_port()}"
    for given in (address, f"ray://{address}"):
        message, seconds = probe_refusal(given)
        assert message.startswith(f"--address {given}: no Ray cluster answers there (Connection refused)")
        assert "HOST:PORT" in message and seconds < 5


def test_address_of_something_that_is_not_a_ray_head(http_server):
    message, seconds = probe_refusal(http_server)
    assert message.startswith(f"--address {http_server}: something answers there, but not a Ray head") and seconds < 5
    message, _ = probe_refusal(f"http://{http_server}")
    assert "not an address a study can join" in message and "ray job submit" in message
    assert "no port given" in probe_refusal("127.0.0.1")[0]
    assert "cannot resolve the host name 'no-such-host.invalid'" in probe_refusal("no-such-host.invalid:6379")[0]


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_dead_address_as_a_user(tmp_path, synthetic_root):
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    out = subprocess.run(RUN + ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--address", address],
                         cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    seconds = time.monotonic() - start
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: --address {address}: no Ray cluster answers there")
    assert "Traceback" not in out.stderr and seconds < 120  # today's Ray retries a dead address without end
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was opened


# ----------------------------------------------------------------------------- a real Ray (slow tier)


def mlflow_runs(workdir: Path) -> list:
    if not (workdir / "mlflow.db").exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]


@pytest.mark.slow
def test_local_ray_asked_for_more_cpus_than_it_has(tmp_path, synthetic_root):
    start = time.monotonic()
    out = subprocess.run(RUN + ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--cpus-per-trial", "64",
                                "--num-samples", "2"], cwd=tmp_path, capture_output=True, text=True, env=ENV,
                         timeout=600)
    seconds = time.monotonic() - start
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --cpus-per-trial 64: no node of this Ray cluster can ever")
    assert "the largest node has" in errors[0] and "Expected --cpus-per-trial <= " in errors[0]
    assert "Traceback" not in out.stderr and "No available node types" not in out.stdout + out.stderr
    assert seconds < 120, seconds  # Ray's start and stop included; it used to wait without end
    assert mlflow_runs(tmp_path) == []  # refused before the parent run: nothing RUNNING, nothing at all
    assert not (tmp_path / "results" / "msdn-synthetic-val" / "tuner.pkl").exists()


@pytest.mark.slow
def test_joined_cluster_asked_for_more_than_any_node_has(tmp_path, synthetic_root):
    from loopback_cluster import LoopbackCluster

    c = LoopbackCluster(tmp_path)
    try:
        c.start()
        env = {**c.env, capacity.NODE_WAIT_ENV: "3"}
        env.pop("RAY_ADDRESS", None)
        start = time.monotonic()
        out = subprocess.run(RUN + ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--address",
                                    c.address, "--cpus-per-trial", "64", "--mlflow-uri", c.mlflow_uri],
                             cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
        seconds = time.monotonic() - start
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith("error: --cpus-per-trial 64: no node of this Ray cluster")
        assert "2 live nodes" in errors[0] and "no such node joined within 3 s" in errors[0]
        assert "waiting up to 3 s" in out.stdout and "Traceback" not in out.stderr and seconds < 120
        from mlflow.tracking import MlflowClient

        assert MlflowClient(c.mlflow_uri).get_experiment_by_name("msdn-synthetic-val") is None
    finally:
        c.stop()
