"""End-to-end studies with a real local Ray, Optuna, ASHA and a SQLite MLflow store.

These run `tune/run.py` as a user would (a subprocess), then read the MLflow store back. The tests
that run whole studies are `slow`; the ones that check a bad input is refused before Ray starts are
in the fast tier.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
EXPERIMENT = "msdn-synthetic-val"


@pytest.fixture
def data_root(synthetic_root) -> Path:
    """The session's synthetic benchmark with its cache (tests/conftest.py); studies only read it."""
    return synthetic_root


@pytest.fixture
def ray_tmpdir():
    """A fresh RAY_TMPDIR: a Ray started by the study would create its ray/session_* folder here.

    Short and under /tmp, as Ray's Unix socket paths below it must stay under the OS length limit.
    """
    path = Path(tempfile.mkdtemp(prefix="msdn-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_study(workdir: Path, *args: str, timeout: float = 600, ray_tmpdir: Path | None = None,
              ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if ray_tmpdir is not None:
        env["RAY_TMPDIR"] = str(ray_tmpdir)
    return subprocess.run(RUN + list(args), cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


def assert_refused_before_ray(workdir: Path, out: subprocess.CompletedProcess, ray_tmpdir: Path) -> None:
    """Exit 2, and nothing a started study leaves behind: no Ray session, no Tune results, no MLflow store."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Started a local Ray instance" not in out.stdout + out.stderr
    assert not list(ray_tmpdir.iterdir()), f"Ray started: {sorted(ray_tmpdir.rglob('*'))[:5]}"
    assert not (workdir / "results").exists() and not (workdir / "mlflow.db").exists()


def mlflow_runs(db: Path, experiment: str = EXPERIMENT):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {db}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("msdn.study") == "parent"]
    children = [r for r in runs if r.data.tags.get("msdn.study") == "trial"]
    return client, parents, children


@pytest.mark.slow
def test_small_study_end_to_end(tmp_path, data_root):
    out = run_study(tmp_path, "--dataset", "synthetic", "--data-root", str(data_root), "--num-samples", "5",
                    "--max-epochs", "4", "--seed", "3", "--refit-seeds", "1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "top trials" in out.stdout and "TEST (refit on trainval" in out.stdout
    from console_checks import assert_console_holds_its_own_lines_and_the_log_file_the_libraries

    assert_console_holds_its_own_lines_and_the_log_file_the_libraries(out, tmp_path, trials=5)
    client, parents, children = mlflow_runs(tmp_path / "mlflow.db")
    assert len(parents) == 1 and len(children) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["protocol"] == "val"
    assert parent.data.params["dataset"] == "synthetic"
    for key in ("test_S", "test_U", "test_H", "test_zsl_acc", "test_AUSUC", "baseline_test_AUSUC_mean", "best_H",
                "best_AUSUC"):
        assert 0.0 <= parent.data.metrics[key] <= 1.0, key
    assert "delta_AUSUC_mean" in parent.data.metrics and "delta_AUSUC_ci_low" not in parent.data.metrics  # 1 seed
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert artifacts >= {"plots/calibration_curve_best_trial.png", "plots/optimisation_history.png",
                         "plots/calibration_curve_refit_test.png", "plots/settings_grid_best_trial.png",
                         "plots/seen_unseen_curve_best_trial.png", "plots/seen_unseen_curve_refits_test.png",
                         "plots/per_class_difference.png"}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "per_class")} == {
        "per_class/per_class_difference.csv"}
    refits = [r for r in client.search_runs([parent.info.experiment_id], "tags.`msdn.study` = 'refit'")]
    assert sorted(r.data.tags["refit.config"] for r in refits) == ["baseline", "tuned"]
    for refit in refits:  # each with its per-class test accuracies
        assert [a.path for a in client.list_artifacts(refit.info.run_id)] == ["per_class_accuracy.csv"]
    # every metric key the study logged is defined in docs/mlflow.md
    from metric_docs import undocumented

    keys = {"parent": set(parent.data.metrics), "refit": {k for r in refits for k in r.data.metrics},
            "trial": {k for r in children for k in r.data.metrics}}
    assert {kind: undocumented(names, kind) for kind, names in keys.items()} == dict.fromkeys(keys, [])
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "search_space")} == {"search_space/synthetic.yaml"}
    # one seed: the tuned and the authors' refit checkpoints, and the exported configuration, also next to the
    # results (the path is printed)
    checkpoints = sorted(a.path for a in client.list_artifacts(parent.info.run_id, "refit_checkpoints"))
    assert [path.split("/")[1].split("-")[0] for path in checkpoints] == ["baseline", "tuned"]
    assert "best_config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    best_config = tmp_path / "results" / EXPERIMENT / "best_config.yaml"
    assert f"best configuration: {best_config}" in out.stdout and "protocol: paper" in best_config.read_text()
    states = []
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert set(child.data.params) >= {"lambda_dis", "lambda_cal", "lr", "lr_v_factor", "weight_decay"}
        history = client.get_metric_history(child.info.run_id, "H")
        steps = sorted(m.step for m in history)
        epochs = int(child.data.tags["epochs_trained"])
        assert steps == list(range(1, epochs + 1))
        state = child.data.tags["trial_state"]
        assert state == ("completed" if epochs == 4 else "stopped_early")
        states.append(state)
        for metric in ("S", "U", "zsl_acc", "H_grid", "grid_gamma", "loss"):
            assert len(client.get_metric_history(child.info.run_id, metric)) == epochs, metric
        assert child.data.tags["placement.host"]
    assert "completed" in states
    # the authors' configuration is the first point Optuna evaluates
    assert any(c.data.params["lambda_dis"] == "0.001" and c.data.params["lr"] == "0.0005" for c in children)
    # results of Tune are where --storage-path says
    assert (tmp_path / "results" / EXPERIMENT / "tuner.pkl").is_file()
    check_mlflow_as_users_use_it(tmp_path, data_root, client, parent, children)


def check_mlflow_as_users_use_it(workdir: Path, data_root: Path, client, parent, trials) -> None:
    """What MLflow users look for (issue 20): the winner registered and loadable, the Datasets and Source columns,
    each trial's own system metrics."""
    from test_registry import predict_test_split

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    (refit,) = [r for r in client.search_runs([parent.info.experiment_id])
                if r.data.tags.get("msdn.study") == "refit" and r.data.tags["refit.config"] == "tuned"]
    version = client.get_model_version_by_alias("msdn-synthetic", "best")
    assert version.run_id == refit.info.run_id and version.tags["study_run_id"] == parent.info.run_id
    assert version.tags["trial_id"] == parent.data.tags["best_trial_id"]
    # in a fresh process, the registered model's arg-max on the test split gives the refit's logged figures
    predicted = predict_test_split(uri, data_root, workdir, threads=1)  # the refit ran as a one-CPU Ray task
    assert {k: predicted[k] for k in ("S", "U", "H")} == {k: refit.data.metrics[k] for k in ("S", "U", "H")}
    evaluate = subprocess.run([sys.executable, "-m", "msdn.evaluate", "--model", "models:/msdn-synthetic@best",
                               "--dataset", "synthetic", "--data-root", str(data_root), "--json"], cwd=workdir,
                              capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    figures = json.loads(evaluate.stdout.strip().splitlines()[-1])
    assert {k: figures[k] for k in ("S", "U", "H")} == {k: refit.data.metrics[k] for k in ("S", "U", "H")}
    for run in [parent, refit, *trials]:
        assert run.data.tags["mlflow.source.name"].endswith("run.py") and run.data.tags["mlflow.source.type"] == "LOCAL"
    for trial in trials:
        inputs = client.get_run(trial.info.run_id).inputs.dataset_inputs
        assert sorted((i.dataset.name, i.tags[0].value) for i in inputs) == [
            ("synthetic/val/train", "training"), ("synthetic/val/validation", "validation")]
        # sampled in the trial's own process, reported with each epoch's results
        cpu = client.get_metric_history(trial.info.run_id, "system/cpu_utilization_percentage")
        rss = client.get_metric_history(trial.info.run_id, "system/process_memory_rss_megabytes")
        assert sorted(m.step for m in cpu) == list(range(1, int(trial.data.tags["epochs_trained"]) + 1))
        assert all(m.value > 50 for m in rss)
    assert {i.dataset.name for i in client.get_run(refit.info.run_id).inputs.dataset_inputs} == {
        "synthetic/paper/trainval", "synthetic/paper/test"}
    assert client.get_metric_history(refit.info.run_id, "system/cpu_utilization_percentage")


def _wait_for_a_running_trial_with_checkpoints(results: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until a trial holds 2 checkpoints and its last result (result.json, written by the driver) is not its last."""
    import json

    deadline = time.time() + timeout
    while time.time() < deadline:
        for trial_dir in results.glob("train_msdn_*"):
            lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").is_file() else []
            try:
                last = json.loads(lines[-1]) if lines else {}
            except ValueError:  # a line being written
                continue
            if len(list(trial_dir.glob("checkpoint_*"))) >= 2 and last.get("done") is False:
                return
        if proc.poll() is not None:
            pytest.fail(f"the study ended before it could be interrupted (exit {proc.returncode})")
        time.sleep(0.2)
    pytest.fail(f"no running trial with 2 checkpoints under {results} within {timeout} s")


def leave_only_checkpoints_tunes_record_does_not_name(results: Path) -> dict[Path, Path]:
    """Make the race of a hard kill happen for sure: Tune deletes a trial's older checkpoints (num_to_keep)
    as soon as a newer one is written, and writes its record of the study every few seconds, so the
    record may name a deleted checkpoint. Here every trial's newest checkpoint moves to a folder number
    no record names, and the others are deleted. Returns {trial folder: its one checkpoint}.
    """
    moved = {}
    for trial_dir in sorted(p for p in results.iterdir() if p.is_dir() and list(p.glob("checkpoint_*"))):
        folders = sorted(trial_dir.glob("checkpoint_*"), key=lambda f: f.name)
        target = trial_dir / f"checkpoint_{int(folders[-1].name.split('_')[1]) + 1:06d}"
        shutil.copytree(folders[-1], target)
        for folder in folders:
            shutil.rmtree(folder)
        moved[trial_dir] = target
    assert moved
    return moved


@pytest.mark.slow
def test_killed_study_resumes_with_one_run_per_trial(tmp_path, data_root):
    args = ["--dataset", "synthetic", "--data-root", str(data_root), "--num-samples", "6", "--max-epochs", "5",
            "--no-refit"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(RUN + args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        _wait_for_a_running_trial_with_checkpoints(tmp_path / "results" / EXPERIMENT, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-way, no clean-up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    _, _, before = mlflow_runs(tmp_path / "mlflow.db")
    assert 0 < len(before) < 6 or any(r.info.status == "RUNNING" for r in before)
    lagging = leave_only_checkpoints_tunes_record_does_not_name(tmp_path / "results" / EXPERIMENT)

    out = run_study(tmp_path, *args, "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # at least one trial was running: it resumed from the checkpoint its folder held (its line is in the log)
    log = (tmp_path / "results" / EXPERIMENT / "study.log").read_text()
    resumed_from = [str(c) for c in lagging.values() if f"resuming from {c}, newer than" in log]
    assert resumed_from, log[-3000:]
    client, parents, children = mlflow_runs(tmp_path / "mlflow.db")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(trial_ids) == 6 and len(set(trial_ids)) == 6  # exactly one run per trial
    for child in children:
        assert child.info.status == "FINISHED", child.info.run_name
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "H")]
        assert sorted(steps) == list(range(1, int(child.data.tags["epochs_trained"]) + 1))  # no repeated epochs
    # a trial that had started before the kill kept its run and continued it; a trial started after Tune's last
    # record of the study is not one of the restored study's trials: its run is gone and its configuration ran
    # again as a new trial (callback.reconcile)
    before_ids = {r.data.tags["trial_id"]: r.info.run_id for r in before}
    after_ids = {c.data.tags["trial_id"]: c.info.run_id for c in children}
    kept = [t for t in before_ids if t in after_ids]
    assert kept and all(after_ids[t] == before_ids[t] for t in kept)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_invalid_search_space_fails_before_ray(tmp_path, data_root, ray_tmpdir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("metric: H\nmode: max\nasha: {max_t: 4, grace_period: 1, reduction_factor: 2}\n"
                   "params:\n  lr: {distribution: loguniform, low: 0.01, high: 0.001}\n")
    out = run_study(tmp_path, "--dataset", "synthetic", "--data-root", str(data_root), "--search-space", str(bad),
                    ray_tmpdir=ray_tmpdir)
    assert_refused_before_ray(tmp_path, out, ray_tmpdir)
    assert "bad.yaml" in out.stderr and "params.lr.low" in out.stderr


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_unreachable_tracking_server_fails_before_ray(tmp_path, data_root, ray_tmpdir):
    out = run_study(tmp_path, "--dataset", "synthetic", "--data-root", str(data_root),
                    "--mlflow-uri", "http://127.0.0.1:9", ray_tmpdir=ray_tmpdir)
    assert_refused_before_ray(tmp_path, out, ray_tmpdir)
    assert "--mlflow-uri http://127.0.0.1:9" in out.stderr and "does not answer" in out.stderr


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_missing_dataset_fails_before_ray_with_instructions(tmp_path, ray_tmpdir):
    out = run_study(tmp_path, "--dataset", "cub", "--data-root", str(tmp_path / "nodata"), ray_tmpdir=ray_tmpdir)
    assert_refused_before_ray(tmp_path, out, ray_tmpdir)
    assert "feature_map_ResNet_101_CUB.hdf5" in out.stderr and "--dataset synthetic" in out.stderr


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_resume_without_a_study_and_duplicate_study_are_refused(tmp_path, data_root):
    out = run_study(tmp_path, "--dataset", "synthetic", "--data-root", str(data_root), "--resume")
    assert out.returncode == 2 and "--resume: no study named 'msdn-synthetic-val'" in out.stderr
    (tmp_path / "results" / EXPERIMENT).mkdir(parents=True)
    (tmp_path / "results" / EXPERIMENT / "tuner.pkl").write_bytes(b"x")
    out = run_study(tmp_path, "--dataset", "synthetic", "--data-root", str(data_root))
    assert out.returncode == 2 and "already exists" in out.stderr and "--resume" in out.stderr


@pytest.mark.slow
def test_study_where_every_trial_fails_exits_1_with_the_first_error(tmp_path, data_root):
    space = tmp_path / "diverge.yaml"  # learning rates that make every trial diverge in its first epoch
    space.write_text("metric: H\nmode: max\nasha: {max_t: 2, grace_period: 1, reduction_factor: 2}\n"
                     "searcher: {seed: 0, start_from_defaults: false}\n"
                     "params:\n  lr: {distribution: loguniform, low: 1.0e+6, high: 1.0e+8}\n")
    out = run_study(tmp_path, "--dataset", "synthetic", "--data-root", str(data_root), "--search-space", str(space),
                    "--num-samples", "2", "--max-failures", "0")
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "every trial failed; the first error" in out.stderr and "training diverged" in out.stderr
    _, parents, children = mlflow_runs(tmp_path / "mlflow.db")
    assert parents[0].info.status == "FAILED" and parents[0].data.tags["study_state"] == "failed"
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FAILED" and child.data.tags["trial_state"] == "errored"
        assert "training diverged" in child.data.tags["error"]
