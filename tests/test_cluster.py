"""The study on a real two-node Ray cluster (loopback), submitted with `ray job submit`.

Slow tier: the tests share a Ray head and a worker node started with the launcher YAML's own start commands,
in a clean environment without the venv on PATH (tests/loopback_cluster.py), and an MLflow tracking
server with a SQLite backend; everything is stopped afterwards, also when an assertion fails.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from loopback_cluster import BIN, LoopbackCluster, readme_submit_command

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "msdn-synthetic-val"
NODE_LOSS = "node-loss"  # the node-loss study's experiment, apart from the README command's on the shared cluster


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """One loopback cluster for this file's tests (each start costs two Ray nodes and an MLflow server: tens of
    seconds on two cores). Each test keeps to its own experiment and storage path on it."""
    workdir = tmp_path_factory.mktemp("cluster")
    c = LoopbackCluster(workdir)
    try:
        c.start()
        yield c
    finally:
        c.stop()
    assert not c.processes(), f"processes of the test cluster still running: {c.processes()}"
    for marker in (str(workdir), str(c.session_root)):
        leftover = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
        assert not leftover, f"processes of the test cluster still running: {leftover}"


@pytest.fixture
def cluster(two_nodes):
    """The shared cluster with its two nodes: a worker node lost in an earlier test is replaced first."""
    if not any("worker_node" in n["resources"] for n in two_nodes.alive_nodes()):
        two_nodes.start_worker()
        two_nodes.wait_for_nodes(2)
    return two_nodes


@pytest.fixture
def shared_data(synthetic_root):
    """The data root on a path every node sees (one machine: the same filesystem); the session's, read only."""
    return synthetic_root


@pytest.fixture
def shared_results(tmp_path) -> Path:
    """This test's --storage-path, also on a path every node sees."""
    return tmp_path / "shared" / "results"


def study_command(cluster: LoopbackCluster, data_root: Path, results: Path, *extra: str) -> list[str]:
    return ["python", "tune/run.py", "--dataset", "synthetic", "--address", "auto", "--data-root", str(data_root),
            "--storage-path", str(results), "--mlflow-uri", cluster.mlflow_uri, "--refit-seeds", "1", "--no-baseline",
            *extra]


def runs(cluster: LoopbackCluster, experiment: str = EXPERIMENT):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("msdn.study") == "parent"]
    children = [r for r in all_runs if r.data.tags.get("msdn.study") == "trial"]
    return client, parents, children


def test_readmes_submit_command_runs_on_nodes_started_by_the_launcher_yaml(cluster, shared_data, shared_results):
    nodes = {n["id"] for n in cluster.alive_nodes()}
    assert len(nodes) == 2
    # The README's command as a user types it (entrypoint `python tune/run.py`, unchanged); only the
    # cluster's addresses, paths and this machine's lack of GPUs differ.
    command = readme_submit_command(
        submit={"--address": cluster.dashboard},
        study={"--dataset": "synthetic", "--data-root": str(shared_data), "--storage-path": str(shared_results),
               "--mlflow-uri": cluster.mlflow_uri, "--gpus-per-trial": "0"},
        extra=["--num-samples", "4", "--max-epochs", "3"],
    )
    assert command[command.index("--") + 1:][:2] == ["python", "tune/run.py"]
    out = cluster.run_client(command, cwd=REPO)
    logs = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in logs, logs[-4000:]
    assert "cluster of 2 nodes: storage and data reachable from every node" in logs
    client, parents, children = runs(cluster)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "test_H" in parents[0].data.metrics and parents[0].data.tags["ray.nodes"] == "2"
    assert len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    used = {c.data.tags["placement.node_id"] for c in children}
    # Each trial's node is recorded and is one of the cluster's. Which nodes: Ray's to choose (on a loaded machine
    # the head's reused worker may take every trial before the worker node's has started); that trials do run on
    # the worker node is test_study_survives_losing_the_worker_node's first step.
    assert used and used <= nodes, f"trials ran on {used}, the cluster has {nodes}"
    # trials never reached the tracking server themselves: only the driver's host is in its access log
    assert (shared_results / EXPERIMENT / "tuner.pkl").is_file()


def test_node_local_storage_is_refused_on_a_multi_node_cluster(cluster, shared_data, tmp_path):
    # a folder the head (where the job's driver runs) sees and the worker node does not
    out = cluster.submit(REPO, ["python", "tune/run.py", "--dataset", "synthetic", "--address", "auto",
                                "--data-root", str(shared_data), "--storage-path", str(cluster.node_local_dir / "results"),
                                "--mlflow-uri", cluster.mlflow_uri, "--num-samples", "2", "--experiment", "refused"])
    logs = out.stdout + out.stderr
    assert out.returncode != 0, logs[-3000:]
    assert "is local to the driver's node" in logs and "shared filesystem" in logs


def test_study_survives_losing_the_worker_node(cluster, shared_data, shared_results, tmp_path):
    worker = next(n["id"] for n in cluster.alive_nodes() if "worker_node" in n["resources"])
    # Trials long enough (30 epochs, no early stop) that the one on the worker is still training when it dies.
    space = tmp_path / "long_trials.yaml"
    space.write_text(
        "metric: H\nmode: max\nasha: {max_t: 30, grace_period: 30, reduction_factor: 2}\n"
        "params:\n  gamma: {distribution: uniform, low: 1.5, high: 2.5}\n"
        "  lr: {distribution: loguniform, low: 4.0e-4, high: 6.0e-4}\n"
    )
    job_id = f"msdn-node-loss-{uuid.uuid4().hex[:8]}"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--no-wait", "--submission-id", job_id, "--address", cluster.dashboard,
         "--working-dir", str(REPO), "--",
         *study_command(cluster, shared_data, shared_results, "--search-space", str(space), "--num-samples", "3",
                        "--max-concurrent", "2", "--max-failures", "2", "--experiment", NODE_LOSS)],
        env=cluster.env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert submit.returncode == 0, submit.stderr[-3000:]
    # wait until a trial is training on the worker node, then kill that node's raylet
    deadline = time.time() + 300
    victim = None
    while time.time() < deadline and victim is None:
        try:
            _, _, children = runs(cluster, NODE_LOSS)
        except AssertionError:
            children = []
        for c in children:
            if (c.data.tags.get("placement.node_id") == worker and c.info.status == "RUNNING"
                    and c.data.tags.get("trial_state") == "running"):
                victim = c.data.tags["trial_id"]
        time.sleep(1)
    assert victim is not None, "no trial ever ran on the worker node"
    cluster.kill_worker_node()
    status = ""
    deadline = time.time() + 600
    while time.time() < deadline:
        answer = cluster.ray("job", "status", "--address", cluster.dashboard, job_id, check=False)
        status = (answer.stdout + answer.stderr).lower()
        if "does not exist" in status or any(f"job '{job_id}' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    answer = cluster.ray("job", "logs", "--address", cluster.dashboard, job_id, check=False)
    logs = answer.stdout + answer.stderr
    assert f"job '{job_id}' succeeded" in status, status + logs[-4000:]
    client, parents, children = runs(cluster, NODE_LOSS)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    hit = next(c for c in children if c.data.tags["trial_id"] == victim)
    # what happened is on the trial's run: a retry, the error, and where it finished
    assert int(hit.data.tags.get("retries", "0")) >= 1, hit.data.tags
    assert hit.data.tags["trial_state"] == "completed" and hit.data.tags["epochs_trained"] == "30"
    assert hit.data.tags["placement.node_id"] != worker
    local = client.download_artifacts(parents[0].info.run_id, "study_summary.json", str(tmp_path))
    summary = json.loads(Path(local).read_text())
    assert len(summary["trials"]) == 3
