"""Interrupting a study the way people do: Ctrl+C (SIGINT to the process group), SIGTERM to the driver, a second
Ctrl+C while it shuts down, and Ctrl+C during the refits. An interrupted study exits 130, reports no
test result, leaves its runs KILLED (never FINISHED, never RUNNING), and `--resume` then finishes it:
every trial exactly once, exactly one MLflow run per trial and per refit, each refit done once.

The study interrupted during its refits is also started a second time while it runs, with and without
--resume (the study lock): each second start ends with exit 2 in seconds, naming the running study's pid,
having written nothing (MLflow holds one parent run, the log file no second start), and the first study goes
on unharmed. The lock's logic, in-process: tests/test_started.py.

The studies interrupted during their trials refit one seed without the authors' configuration
(`QUICK_REFIT`); the one interrupted during its refits runs the default: 3 seeds, tuned and authors'.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from msdn.fsutil import lock_holder

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
EXPERIMENT = "msdn-synthetic-val"
ENV = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1"}


QUICK_REFIT = ["--refit-seeds", "1", "--no-baseline"]


def study_args(data_root: Path, samples: int = 6, refit: list[str] = QUICK_REFIT) -> list[str]:
    return ["--dataset", "synthetic", "--data-root", str(data_root), "--num-samples", str(samples),
            "--max-epochs", "4", "--seed", "1", *refit]


class Study:
    """A study in its own process group (as a terminal runs a command), its output in a file."""

    def __init__(self, workdir: Path, args: list[str], log_name: str) -> None:
        self.log = workdir / log_name
        self._fh = open(self.log, "w")
        self.proc = subprocess.Popen(RUN + args, cwd=workdir, stdout=self._fh, stderr=subprocess.STDOUT, env=ENV,
                                     start_new_session=True)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, predicate, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"the study ended (exit {self.proc.returncode}) before {what}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        pytest.fail(f"no {what} within {timeout} s:\n{self.text()[-3000:]}")

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)  # what a terminal's Ctrl+C does: the whole foreground group

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._fh.close()


def checkpoints(workdir: Path) -> int:
    return len(list((workdir / "results" / EXPERIMENT).glob("*/checkpoint_*")))


def runs(workdir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    everything = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in everything if r.data.tags.get("msdn.study") == "parent"]
    children = [r for r in everything if r.data.tags.get("msdn.study") == "trial"]
    return client, parents, children


def assert_interrupted(workdir: Path, study: Study, code: int) -> None:
    out = study.text()
    assert code == 130, out[-3000:]
    assert "study interrupted" in out and "--resume" in out
    assert "TEST (refit" not in out and "refit: training" not in out
    _, parents, children = runs(workdir)
    assert len(parents) == 1
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["study_state"] == "interrupted"
    assert "test_H" not in parents[0].data.metrics
    statuses = {c.info.status for c in children}
    assert "RUNNING" not in statuses
    unfinished = [c for c in children if int(c.data.tags.get("epochs_trained", "0")) < 4
                  and c.data.tags["trial_state"] not in ("stopped_early",)]
    assert unfinished, "the interruption should have caught trials mid-way"
    for child in unfinished:
        assert child.info.status == "KILLED" and child.data.tags["trial_state"] == "interrupted", child.data.tags


def assert_resumes_to_a_complete_study(workdir: Path, data_root: Path, samples: int = 6) -> None:
    out = subprocess.run(RUN + study_args(data_root, samples) + ["--resume"], cwd=workdir, capture_output=True,
                         text=True, env=ENV, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("TEST (refit") == 1
    client, parents, children = runs(workdir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["study_state"] == "completed" and "test_H" in parents[0].data.metrics
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(trial_ids) == samples and len(set(trial_ids)) == samples  # one run per trial
    for child in children:
        assert child.info.status == "FINISHED", (child.info.run_name, child.data.tags)
        assert child.data.tags["trial_state"] in ("completed", "stopped_early")
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "H"))
        assert steps == list(range(1, int(child.data.tags["epochs_trained"]) + 1))  # each epoch once


def test_ctrl_c_during_trials_exits_130_and_resume_finishes_the_study(tmp_path, synthetic_root):
    study = Study(tmp_path, study_args(synthetic_root), "first.log")
    study.wait_for(lambda: checkpoints(tmp_path) >= 3, "three checkpoints")
    study.signal_group(signal.SIGINT)
    assert_interrupted(tmp_path, study, study.finish())
    assert_resumes_to_a_complete_study(tmp_path, synthetic_root)


def test_sigterm_then_a_second_ctrl_c_while_stopping_is_still_a_clean_interruption(tmp_path, synthetic_root):
    study = Study(tmp_path, study_args(synthetic_root, samples=4), "first.log")
    study.wait_for(lambda: checkpoints(tmp_path) >= 2, "two checkpoints")
    # `kill PID`, or a container runtime stopping its main process. (SIGTERM to the whole group would
    # also stop Ray's own processes, the case of a hard kill: state saved, resumable; see README.)
    os.kill(study.proc.pid, signal.SIGTERM)
    study.wait_for(lambda: "SIGTERM received" in study.text(), "the stop message")
    study.signal_group(signal.SIGINT)  # impatient: a second stop while Tune saves its state
    code = study.finish()
    assert "SIGINT received again" in study.text()
    assert_interrupted(tmp_path, study, code)
    assert_resumes_to_a_complete_study(tmp_path, synthetic_root, samples=4)


def refit_runs(workdir: Path) -> list:
    client, *_ = runs(workdir)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("msdn.study") == "refit"]


def assert_a_second_start_is_refused_at_once(workdir: Path, study: Study, args: list[str]) -> None:
    """The same command again, and the --resume a user might try, while `study` runs: both refused by its lock."""
    folder = workdir / "results" / EXPERIMENT
    study.wait_for(lambda: "parent run" in study.text(), "the parent run")  # MLflow and Ray are up, trials next
    assert lock_holder(folder / "study.lock").startswith(f"pid {study.proc.pid} on host ")
    start = time.monotonic()
    seconds = [subprocess.Popen(RUN + args + extra, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=ENV) for extra in ([], ["--resume"])]
    for second in seconds:
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, out[-2000:] + err[-2000:]
        assert time.monotonic() - start < 60 and "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: the study {EXPERIMENT!r} ({folder}) is running "
                                                         f"now (pid {study.proc.pid} on host ")
        assert "nothing was written" in errors[0] and "Started a local Ray" not in out + err
        assert f"(pid {second.pid})" not in (folder / "study.log").read_text()  # it never opened the log
    _, parents, _ = runs(workdir)
    assert len(parents) == 1 and parents[0].info.status == "RUNNING"
    assert study.proc.poll() is None  # it ran all along: the refusals were the lock's


def test_ctrl_c_during_the_refits_keeps_the_finished_ones_and_resume_runs_only_the_others(tmp_path, synthetic_root):
    args = study_args(synthetic_root, samples=3, refit=[])  # the default: 3 seeds, tuned and authors' = 6 refits
    refits = tmp_path / "results" / EXPERIMENT / "refits"
    study = Study(tmp_path, args, "first.log")
    assert_a_second_start_is_refused_at_once(tmp_path, study, args)
    study.wait_for(lambda: "[1/6]" in study.text(), "the first finished refit")
    study.signal_group(signal.SIGINT)
    code = study.finish()
    out = study.text()
    assert code == 130, out[-3000:]
    assert lock_holder(tmp_path / "results" / EXPERIMENT / "study.lock") is None  # released by the interrupted study
    assert "TEST (refit" not in out and "study interrupted" in out and "refits interrupted" in out
    _, parents, children = runs(tmp_path)
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["study_state"] == "interrupted"
    assert "test_H" not in parents[0].data.metrics
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)  # the trials had finished
    finished = {p.parent.name: p.stat().st_mtime_ns for p in refits.glob("*/result.json")}
    assert 1 <= len(finished) < 6, finished
    assert {r.data.tags["refit.name"] for r in refit_runs(tmp_path)} <= set(finished)

    out = subprocess.run(RUN + args + ["--resume"], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("TEST (refit") == 1
    for name, mtime in finished.items():  # found in the storage, not run again
        assert f"refit {name} (" in out.stdout and (refits / name / "result.json").stat().st_mtime_ns == mtime
    assert out.stdout.count("[found in the study's storage: not run again]") == len(finished)
    table = out.stdout[out.stdout.index("TEST (refit"):]
    assert " tuned (" in table and " authors' (" in table and "\n  H " in table
    assert "delta H (tuned - authors', paired by seed)" in table

    client, parents, children = runs(tmp_path)
    parent = parents[0]
    assert len(parents) == 1 and parent.info.status == "FINISHED" and len(children) == 3
    for name in ("test_H", "test_S_mean", "test_H_mean", "test_H_std", "test_H_ci_low", "test_H_ci_high",
                 "test_zsl_acc_ci_high", "baseline_test_H_mean", "baseline_test_U_ci_low", "delta_H_mean",
                 "delta_H_ci_low", "delta_H_ci_high"):
        assert name in parent.data.metrics, name
    assert parent.data.metrics["test_H_ci_low"] <= parent.data.metrics["test_H_mean"] <= parent.data.metrics[
        "test_H_ci_high"]
    done = refit_runs(tmp_path)
    names = sorted(r.data.tags["refit.name"] for r in done)
    assert len(names) == 6 and len(set(names)) == 6  # one MLflow run per refit, none repeated
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in done)
    seeds = {config: {r.data.tags["refit.seed"] for r in done if r.data.tags["refit.config"] == config}
             for config in ("tuned", "baseline")}
    assert len(seeds["tuned"]) == 3 and seeds["tuned"] == seeds["baseline"]  # paired by seed
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "best_config.yaml" in artifacts
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "refit_checkpoints")} == {
        f"refit_checkpoints/{name}" for name in names}

    # the exported configuration retrains the first tuned refit bit for bit (same device and threads: one CPU)
    best_config = tmp_path / "results" / EXPERIMENT / "best_config.yaml"
    seed = yaml.safe_load(best_config.read_text())["seed"]
    refit = json.loads((refits / f"tuned-seed{seed}" / "result.json").read_text())
    train = subprocess.run([sys.executable, "-m", "msdn.train", "--config", str(best_config), "--dataset", "synthetic",
                            "--device", "cpu", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={**ENV, "OMP_NUM_THREADS": str(refit["threads"])})
    assert train.returncode == 0, train.stderr[-3000:]
    last = json.loads(train.stdout.strip().splitlines()[-1])
    figures = ("S", "U", "H", "zsl_acc")
    assert {k: last[k] for k in figures} == {k: refit["metrics"][k] for k in figures}
