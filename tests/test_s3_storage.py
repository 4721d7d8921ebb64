"""`--storage-path s3://...` for real, against a local S3-compatible server (moto's, on loopback).

Fast tier: the storage checks that run before Ray starts (a reachable bucket passes; a missing bucket,
an endpoint that does not answer and an existing study are refused by name), and the per-node check's
message. Slow tier: one study on a two-node loopback cluster with S3 storage and an MLflow server whose
artifacts go to the same S3 server; its driver is killed (SIGKILL) mid-study and `--resume` finishes
it from S3; then a node that cannot reach the store joins, and the next study is refused.

The S3 server is reached through the environment a user sets (AWS_ENDPOINT_URL and the credentials);
nothing here leaves loopback.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from loopback_cluster import LoopbackCluster
from mlflow_server import free_port

pytest.importorskip("moto.server", reason="the S3 test server comes with the dev extra: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "msdn-synthetic-val"
BUCKET = "msdn-studies"


class S3Server:
    """moto's S3-compatible server on a free loopback port, in its own process group."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # What a user exports for an S3-compatible store; the region keeps every client on the endpoint.
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "msdn-test",
                    "AWS_SECRET_ACCESS_KEY": "msdn-test-secret", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_REGION": "us-east-1"}
        self.log = workdir / "s3_server.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.endpoint, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the S3 test server did not come up; see {self.log}")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def s3(tmp_path, monkeypatch):
    server = S3Server(tmp_path)
    try:
        server.client().create_bucket(Bucket=BUCKET)
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        yield server
    finally:
        server.stop()


def options(storage: str, data_root: Path, **kw):
    from msdn.study.options import StudyRequest, with_defaults

    return with_defaults(StudyRequest(dataset="synthetic", storage_path=storage, data_root=str(data_root),
                                      experiment=EXPERIMENT, **kw), 4)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_storage_checks_before_ray_accept_a_reachable_bucket_and_refuse_the_rest(s3, synthetic_root, tmp_path,
                                                                                 monkeypatch):
    from msdn.study.options import StudyError, check_object_storage, check_storage

    uri = f"s3://{BUCKET}/studies"
    check_object_storage(uri)  # reachable, the bucket exists; the prefix need not
    check_storage(options(uri, synthetic_root))  # no study there yet: a new one may start
    with pytest.raises(StudyError, match="--resume: no study named"):
        check_storage(options(uri, synthetic_root, resume=True))
    s3.client().put_object(Bucket=BUCKET, Key=f"studies/{EXPERIMENT}/tuner.pkl", Body=b"x")
    with pytest.raises(StudyError, match="already exists"):
        check_storage(options(uri, synthetic_root))
    check_storage(options(uri, synthetic_root, resume=True))

    with pytest.raises(StudyError, match="bucket 'no-such-bucket' does not exist"):
        check_object_storage("s3://no-such-bucket/studies")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(StudyError, match=r"cannot reach bucket .*AWS_ENDPOINT_URL"):
        check_object_storage(uri)


def test_per_node_object_storage_check_names_the_nodes_that_cannot_read_the_probe(s3, synthetic_root, monkeypatch):
    import ray

    from msdn.study import cluster
    from msdn.study.options import StudyError

    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": "a" * 40, "Alive": True}, {"NodeID": "b" * 40, "Alive": True}])
    probes: list[str] = []

    def on_every_node(fn, uri):
        probes.append(uri)
        assert fn(uri) is True  # the driver's probe object is there, readable with these credentials
        return {"a" * 40: True, "b" * 40: OSError("AWS Error NETWORK_CONNECTION during HeadObject operation")}

    monkeypatch.setattr(cluster, "_on_every_node", on_every_node)
    with pytest.raises(StudyError) as err:
        cluster.check_cluster_storage_and_data(options(f"s3://{BUCKET}/studies", synthetic_root), progress=None)
    message = str(err.value)
    assert "not reachable from 1 of 2 nodes" in message and "bbbbbbbbbbbb" in message and "aaaaaaaaaaaa" not in message
    assert "NETWORK_CONNECTION" in message and "AWS_ENDPOINT_URL" in message and "ray start" in message
    assert probes and not s3.keys("studies/.msdn-storage-probe")  # the probe object is removed afterwards


# --- the whole study on S3, on a two-node loopback cluster -------------------------------------------------


def study_command(cluster: LoopbackCluster, data_root: Path, storage: str, *extra: str) -> list[str]:
    return ["python", "tune/run.py", "--dataset", "synthetic", "--address", "auto", "--data-root", str(data_root),
            "--storage-path", storage, "--mlflow-uri", cluster.mlflow_uri, *extra]


def job_status(cluster: LoopbackCluster, job_id: str) -> str:
    answer = cluster.ray("job", "status", "--address", cluster.dashboard, job_id, check=False)
    text = (answer.stdout + answer.stderr).lower()
    for state in ("succeeded", "failed", "stopped", "running", "pending"):
        # a finished job: "Job 'ID' succeeded"; a live one: "Status for job 'ID': RUNNING"
        if f"job '{job_id}' {state}" in text or f"status for job '{job_id}': {state}" in text:
            return state
    return "unknown"


def wait_until(predicate, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    pytest.fail(f"no {what} within {timeout} s")


def driver_pid(cluster: LoopbackCluster) -> int | None:
    """The job's driver: this cluster's `python tune/run.py` process (not the shell the job supervisor ran)."""
    for pid, cmd in cluster.processes().items():
        argv = cmd.split(" ")
        if Path(argv[0]).name.startswith("python") and "tune/run.py" in argv[1:3]:
            return pid
    return None


def mlflow_runs(cluster: LoopbackCluster):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    everything = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in everything if r.data.tags.get("msdn.study") == "parent"]
    children = [r for r in everything if r.data.tags.get("msdn.study") == "trial"]
    return client, parents, children


@pytest.mark.slow
def test_study_on_s3_survives_a_killed_driver_and_a_node_without_the_store_is_refused(tmp_path, synthetic_root):
    s3 = S3Server(tmp_path)
    s3.client().create_bucket(Bucket=BUCKET)
    # Every node gets the store's endpoint and credentials in the environment `ray start` runs with (as the
    # launcher YAML's comment says); the MLflow server writes its artifacts to the same store.
    cluster = LoopbackCluster(tmp_path, node_env=s3.env, mlflow_artifacts=f"s3://{BUCKET}/mlflow")
    storage = f"s3://{BUCKET}/studies"
    samples = 4
    args = ["--num-samples", str(samples), "--max-epochs", "4", "--max-concurrent", "2", "--seed", "1",
            "--refit-seeds", "1", "--no-baseline"]
    try:
        cluster.start()
        nodes = {n["id"] for n in cluster.alive_nodes()}
        job_id = f"msdn-s3-{uuid.uuid4().hex[:8]}"
        first = cluster.run_client(["ray", "job", "submit", "--no-wait", "--submission-id", job_id, "--address",
                                    cluster.dashboard, "--working-dir", ".", "--",
                                    *study_command(cluster, synthetic_root, storage, *args)], cwd=REPO, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        # Mid-study: checkpoints in S3, then the driver dies at once (its whole process group, SIGKILL).
        wait_until(lambda: driver_pid(cluster) is not None, "the job's driver", 120)
        wait_until(lambda: sum("/checkpoint_" in k for k in s3.keys(f"studies/{EXPERIMENT}/")) >= 2
                   or driver_pid(cluster) is None, "two checkpoints in S3", 300)
        pid = driver_pid(cluster)
        assert pid is not None and job_status(cluster, job_id) == "running", "the study ended before the kill"
        assert os.getpgid(pid) != os.getpgid(0)
        os.killpg(os.getpgid(pid), signal.SIGKILL)
        wait_until(lambda: job_status(cluster, job_id) in ("failed", "stopped"), "the killed job's end", 120)
        logs = cluster.ray("job", "logs", "--address", cluster.dashboard, job_id, check=False).stdout
        assert "cluster of 2 nodes: storage and data reachable from every node" in logs, logs[-3000:]
        assert f"studies/{EXPERIMENT}/tuner.pkl" in s3.keys(f"studies/{EXPERIMENT}/")

        resumed = cluster.submit(REPO, study_command(cluster, synthetic_root, storage, *args, "--resume"))
        out = resumed.stdout + resumed.stderr
        (tmp_path / "resumed.log").write_text(out)
        assert resumed.returncode == 0 and "succeeded" in out, out[-4000:]
        client, parents, children = mlflow_runs(cluster)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED" and "test_H" in parents[0].data.metrics
        assert {c.data.tags["placement.node_id"] for c in children if "placement.node_id" in c.data.tags} <= nodes
        # The study's plots and summary: logged through the tracking server, stored in S3.
        artifacts = [k for k in s3.keys("mlflow/") if f"/{parents[0].info.run_id}/artifacts/" in k]
        assert any(k.endswith("/study_summary.json") for k in artifacts), artifacts
        assert any(k.endswith(".png") for k in artifacts), artifacts
        summary = json.loads(Path(client.download_artifacts(parents[0].info.run_id, "study_summary.json",
                                                             str(tmp_path))).read_text())
        assert len(summary["trials"]) == samples
        study_trials = {t["trial_id"] for t in summary["trials"]}
        assert any("/refits/" in k for k in s3.keys(f"studies/{EXPERIMENT}/"))  # the refit's result, in S3 too

        # A third node whose environment points at no store (nothing listens on that port): refused.
        cluster.start_worker(env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, resource="blind_node")
        cluster.wait_for_nodes(3)
        refused = cluster.submit(REPO, study_command(cluster, synthetic_root, f"s3://{BUCKET}/other", *args,
                                                     "--experiment", "refused"))
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0, out[-3000:]
        assert "is not reachable from 1 of 3 nodes" in out and "NETWORK_CONNECTION" in out, out[-3000:]
        assert "AWS_ENDPOINT_URL" in out
        assert not [k for k in s3.keys("other/") if "refused/" in k]  # refused before Tune wrote anything
    finally:
        cluster.stop()
        s3.stop()
    assert not cluster.processes()
    # Exactly one MLflow run per trial of the study, each FINISHED (checked last, so that the rest is known).
    runs = [(c.data.tags["trial_id"], c.info.status, c.data.tags.get("trial_state"), c.data.tags.get("epochs_trained"))
            for c in children]
    extra = [r for r in runs if r[0] not in study_trials]
    unfinished = [r for r in runs if r[1] != "FINISHED"]
    assert sorted({r[0] for r in runs} & study_trials) == sorted(study_trials), f"trials without a run: {runs}"
    # after a hard kill, the resumed study reconciles MLflow with Tune's restored trials (callback.reconcile)
    assert not extra and not unfinished, f"runs {runs}; the study's trials {sorted(study_trials)}"
