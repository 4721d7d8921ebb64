"""The MLflow UI shows a study as it is meant to read: a real tiny study, a real `mlflow server`, headless Chromium.

    python -m pytest -q tests/test_mlflow_ui.py          (slow tier: a 3-trial study, then two pages)
    MSDN_TEST_ARTIFACTS=/some/folder python -m pytest -q tests/test_mlflow_ui.py   (keeps the screenshots)

Chromium loads each page, lets the React app fetch and render (--virtual-time-budget), then prints the DOM
(--dump-dom) and saves a screenshot. The experiment's runs page sorted by name lists every run flat (the UI
nests children under their parent only in date order, collapsed), so the trials' readable names are in its
DOM; the parent run's page shows the description (`mlflow.note.content`, rendered from markdown) and its
child runs by name. Skipped when no Chromium or Chrome binary is on PATH.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow_server import MlflowServer
from test_study import EXPERIMENT, mlflow_runs, run_study

MODEL = "msdn-synthetic"  # the registered model of a synthetic study
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
BUDGETS_MS = (20000, 40000, 60000)  # virtual time for the app to fetch and render; longer when a page comes up short


def browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def page_text(dom: str) -> str:
    """The visible text of a dumped DOM, on one line with single spaces."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def render(chrome: str, url: str, screenshot: Path, expected: list[str]) -> str:
    """The text of `url` once rendered, with a screenshot; loads it again with more time while text is missing."""
    for budget in BUDGETS_MS:
        out = subprocess.run(
            [chrome, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={screenshot.parent / 'chrome'}",
             f"--virtual-time-budget={budget}", "--window-size=1600,1000", f"--screenshot={screenshot}",
             "--dump-dom", url], capture_output=True, text=True, timeout=300)
        text = page_text(out.stdout)
        if all(item in text for item in expected):
            break
    keep = os.environ.get("MSDN_TEST_ARTIFACTS")
    if keep and screenshot.is_file():
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(keep) / screenshot.name)
    return text


@pytest.mark.slow
def test_mlflow_ui_shows_readable_run_names_the_study_description_the_model_datasets_and_system_metrics(
        tmp_path, synthetic_root):
    chrome = browser()
    if chrome is None:
        pytest.skip(f"no Chromium or Chrome on PATH (looked for {', '.join(BROWSERS)}); e.g. apt-get install chromium")
    out = run_study(tmp_path, "--dataset", "synthetic", "--data-root", str(synthetic_root), "--num-samples", "3",
                    "--max-epochs", "2", "--refit-seeds", "1", "--no-baseline")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, (parent,), trials = mlflow_runs(tmp_path / "mlflow.db")
    names = sorted(run.info.run_name for run in trials)
    assert len(names) == 3 and all(re.fullmatch(r"t0[1-3] lr=\S+ λdis=\S+ λcal=\S+", n) for n in names), names
    (refit,) = [r for r in client.search_runs([parent.info.experiment_id]) if r.data.tags.get("msdn.study") == "refit"]
    assert re.fullmatch(r"refit tuned seed=\d+", refit.info.run_name)
    description = parent.data.tags["mlflow.note.content"]
    best_name = re.search(r"\*\*Best trial:\*\* `([^`]+)`", description).group(1)
    assert best_name in names

    server = MlflowServer(tmp_path, db="mlflow.db")  # the UI over the study's own store
    server.start()
    try:
        url, experiment = server.uri, parent.info.experiment_id
        runs_page = render(chrome, f"{url}/#/experiments/{experiment}/runs?orderByKey=attributes.run_name&"
                           "orderByAsc=true", tmp_path / "mlflow_ui_runs.png", [parent.info.run_name, *names])
        run_page = render(chrome, f"{url}/#/experiments/{experiment}/runs/{parent.info.run_id}",
                          tmp_path / "mlflow_ui_parent_run.png", ["Child runs", "TEST (refit on trainval"])
        models_page = render(chrome, f"{url}/#/models", tmp_path / "mlflow_ui_models.png", [MODEL])
        model_page = render(chrome, f"{url}/#/models/{MODEL}", tmp_path / "mlflow_ui_model.png", ["@best", "Version 1"])
        refit_page = render(chrome, f"{url}/#/experiments/{experiment}/runs/{refit.info.run_id}",
                            tmp_path / "mlflow_ui_refit_run.png", [f"{MODEL}-tuned-seed", "synthetic/paper/test"])
        trial = trials[0]
        system_page = render(chrome, f"{url}/#/experiments/{experiment}/runs/{trial.info.run_id}/system-metrics",
                             tmp_path / "mlflow_ui_system_metrics.png", ["cpu_utilization_percentage"])
    finally:
        server.stop()

    assert f"study-{EXPERIMENT}" == parent.info.run_name and parent.info.run_name in runs_page, runs_page[:3000]
    for name in [*names, refit.info.run_name]:
        assert name in runs_page, (name, runs_page[:3000])
        assert name in run_page.split("Child runs", 1)[1], (name, run_page[:5000])  # the parent's nested runs
    # the description, rendered from markdown (bold, code spans and the fenced block become plain text here)
    assert f"Study {EXPERIMENT} on synthetic: completed" in run_page, run_page[:5000]
    assert re.search(r"Trials: 3 \(\d completed, \d stopped_early, 0 errored, 0 interrupted\)", run_page)
    assert f"Best trial: {best_name} (trial_id " in run_page
    assert re.search(r"TEST \(refit on trainval, 2 epochs, gamma=\S+\): S=0\.\d{4} U=0\.\d{4} H=0\.\d{4}", run_page)
    # what MLflow users look for (issue 20): the Datasets and Source columns of the runs list, the winner under
    # Models with its alias, the refit run's logged model and datasets, a trial's System metrics tab
    assert "synthetic/val/train" in runs_page and "synthetic/val/validation" in runs_page, runs_page[:5000]
    assert "run.py" in runs_page, runs_page[:5000]  # the Source column: the entry point
    assert MODEL in models_page, models_page[:3000]
    assert re.search(r"@\s*best", model_page) and "Version 1" in model_page, model_page[:3000]
    assert f"{MODEL}-tuned-seed{refit.data.tags['refit.seed']}" in refit_page, refit_page[:5000]
    assert "synthetic/paper/trainval" in refit_page and "synthetic/paper/test" in refit_page, refit_page[:5000]
    for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "process_memory_rss_megabytes"):
        assert name in system_page, (name, system_page[:5000])
    for shot in ("runs", "parent_run", "models", "model", "refit_run", "system_metrics"):
        assert (tmp_path / f"mlflow_ui_{shot}.png").stat().st_size > 10_000, shot
