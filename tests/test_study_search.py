"""The search end to end: a study killed mid-way and resumed keeps its Optuna journal, PRUNED trials included;
alpha and gamma come from the validation settings grid (per epoch in MLflow, a heat map on the parent run, the
refit uses the chosen values); optuna-dashboard opens the journal.

One study (about 2-4 minutes on 2 CPUs) checks all of it, as tests/test_study.py does for the rest.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from optuna.trial import TrialState

from msdn.study.searcher import JOURNAL_FILE, MIN_TRIALS_FOR_IMPORTANCE, load_optuna_study

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
EXPERIMENT = "msdn-synthetic-val"
SAMPLES, EPOCHS = 8, 4
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def trials_by_state(journal: Path) -> dict[TrialState, list]:
    study = load_optuna_study(journal, EXPERIMENT) if journal.is_file() else None
    out: dict[TrialState, list] = {}
    for trial in study.get_trials(deepcopy=False) if study is not None else []:
        out.setdefault(trial.state, []).append(trial)
    return out


def kill_after_first_pruned_trial(workdir: Path, args: list[str], journal: Path, timeout: float = 420) -> dict:
    """Run the study in its own process group, SIGKILL the group once the journal holds a PRUNED trial."""
    with open(workdir / "first.log", "w") as log:
        proc = subprocess.Popen(RUN + args, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pruned = trials_by_state(journal).get(TrialState.PRUNED, [])
                if pruned:
                    os.killpg(proc.pid, signal.SIGKILL)  # the driver and all it started, no clean-up
                    proc.wait(timeout=60)
                    return {t.number: dict(t.intermediate_values) for t in trials_by_state(journal)[TrialState.PRUNED]}
                if proc.poll() is not None:
                    pytest.fail(f"the study ended (exit {proc.returncode}) before a trial was pruned:\n"
                                f"{(workdir / 'first.log').read_text()[-3000:]}")
                time.sleep(0.5)
            pytest.fail(f"no PRUNED trial in {journal} within {timeout} s")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)


def dashboard_states(journal: Path) -> list[str]:
    """The trial states optuna-dashboard shows for the journal's study (its JSON API)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("optuna-dashboard"), str(journal), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    (study,) = json.load(answer)["study_summaries"]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0",
                                            timeout=10) as answer:
                    assert study["study_name"] == EXPERIMENT
                    return [t["state"] for t in json.load(answer)["trials"]]
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_killed_study_resumes_with_its_pruned_trials_and_the_settings_grid(tmp_path, synthetic_root):
    from mlflow.tracking import MlflowClient

    from msdn.study.tracking.parent import REFIT_RUN
    from msdn.study.tracking.store import PARENT_TAG, STUDY_TAG

    args = ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--num-samples", str(SAMPLES),
            "--max-epochs", str(EPOCHS), "--seed", "5", "--refit-seeds", "1", "--no-baseline"]
    journal = tmp_path / "results" / EXPERIMENT / JOURNAL_FILE
    pruned_before = kill_after_first_pruned_trial(tmp_path, args, journal)

    out = subprocess.run(RUN + args + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"Optuna:  optuna-dashboard {journal}" in out.stdout

    # The Optuna study: what was pruned before the kill still is; every Tune trial is COMPLETE or PRUNED once.
    states = trials_by_state(journal)
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}  # FAIL: asked, never recorded
    complete, pruned = states.get(TrialState.COMPLETE, []), states[TrialState.PRUNED]
    assert len(complete) + len(pruned) == SAMPLES and complete
    after = {t.number: t.intermediate_values for t in pruned}
    assert all(after.get(number) == values for number, values in pruned_before.items()), (pruned_before, after)
    for trial in complete:  # ran every epoch; told its best epoch's value
        assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1))
        assert trial.value == max(trial.intermediate_values.values())
    assert all(max(t.intermediate_values) < EPOCHS for t in pruned)
    if shutil.which("optuna-dashboard"):
        shown = dashboard_states(journal)
        assert shown.count("Pruned") == len(pruned) and shown.count("Complete") == len(complete)

    # MLflow: the chosen alpha and gamma per epoch, the heat map, the best trial's choice used by the refit.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get(STUDY_TAG) == "parent"]
    # one FINISHED run per Tune trial (a trial the kill cut off before Tune recorded it may leave a KILLED one)
    children = [r for r in runs if r.data.tags.get(STUDY_TAG) == "trial" and r.info.status == "FINISHED"]
    assert parent.info.status == "FINISHED" and len(children) == SAMPLES
    for child in children:
        assert not {"alpha", "gamma"} & set(child.data.params)  # not searched: chosen on the grid
        epochs = int(child.data.tags["epochs_trained"])
        for key in ("grid_alpha", "grid_gamma", "H_grid"):
            assert len(client.get_metric_history(child.info.run_id, key)) == epochs, key
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/settings_grid_best_trial.png" in plots
    metrics, params = parent.data.metrics, parent.data.params
    assert float(params["best.alpha"]) == metrics["best_grid_alpha"]
    assert float(params["best.gamma"]) == metrics["best_grid_gamma"]
    assert metrics["best_H_grid"] >= metrics["best_H"]  # the configured setting is on the grid
    (refit,) = [r for r in runs if r.data.tags.get(STUDY_TAG) == REFIT_RUN
                and r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert (float(refit.data.params["alpha"]), float(refit.data.params["gamma"])) == (
        metrics["best_grid_alpha"], metrics["best_grid_gamma"])
    importances = {k for k in metrics if k.startswith("importance.")}
    if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE:
        assert importances == {"importance." + p for p in ("lambda_dis", "lambda_cal", "lr", "lr_v_factor",
                                                           "weight_decay", "momentum")}
        assert "plots/param_importances.png" in plots
    else:
        assert not importances and "parameter importances: not computed" in out.stdout
