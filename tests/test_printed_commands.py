"""The commands a study prints for people to paste (msdn/study/report.py, refit.py's repeat_command, best_config.yaml,
searcher.dashboard_command): pasted into a real shell, each path stays one argument, spaces and quotes included."""
from __future__ import annotations

import dataclasses
import shlex
import subprocess
from pathlib import Path

import pytest

from msdn.metrics import SUMMARY_KEYS
from msdn.study.outcome import StudyOutcome
from msdn.study.refit import best_config_text
from msdn.study.report import command_lines, end_lines
from msdn.study.results import RefitResult, Refits, TrialSummary
from msdn.study.search_space import load_search_space

REPO = Path(__file__).resolve().parents[1]
ROOT = "/data/my results/it's here -- ü"  # a space, a quote, a " --" that is no option, a non-ASCII letter


def pasted(lines: list[str], prefix: str) -> str:
    """The command printed after `prefix`, with its continuation line when it was broken."""
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith(prefix))
    text = lines[at].lstrip()[len(prefix):]
    return text + "\n" + lines[at + 1] if text.endswith("\\") else text  # a shell line continuation


def words(command: str) -> list[str]:
    """The arguments bash gives the command `command` pasted into it (its continuation lines included)."""
    out = subprocess.run(["bash", "-c", "printf '%s\\n' " + command], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.fixture
def outcome() -> StudyOutcome:
    space = load_search_space(REPO / "search_spaces" / "synthetic.yaml", "synthetic")
    best = TrialSummary("t1", "completed", 3, {"lr": 5e-4}, best={"H": 0.7, "S": 0.6, "U": 0.8}, best_epoch=2)
    refit = RefitResult(metrics={k: 0.5 for k in SUMMARY_KEYS}, epochs=2, seed=11, train_time=1.0, curve={},
                        checkpoint=f"{ROOT}/msdn-synthetic-val/refits/tuned-seed11/checkpoint.pt", threads=2)
    return StudyOutcome(
        experiment="msdn-synthetic-val", dataset="synthetic", protocol="val", metric="H", mode="max",
        param_names=tuple(space.param_names), planned_trials=1, max_epochs=3,
        experiment_path=f"{ROOT}/msdn-synthetic-val", tracking_uri=f"sqlite:///{ROOT}/mlflow.db", experiment_id="1",
        parent_run_id="run", trials=[best], best=best, refits=Refits([refit]), state="completed",
        best_config_path=f"{ROOT}/msdn-synthetic-val/best_config.yaml",
        journal=f"{ROOT}/msdn-synthetic-val/optuna.journal")


def test_every_printed_command_pastes_with_its_path_as_one_argument(outcome):
    lines = [part for line in end_lines(outcome) for part in line.split("\n")]
    rerun = words(pasted(lines, "rerun it: "))
    assert rerun[-2:] == ["--config", f"{ROOT}/msdn-synthetic-val/best_config.yaml"] and rerun[0] == "OMP_NUM_THREADS=2"
    assert words(pasted(lines, "evaluate one: "))[-2:] == ["--checkpoint", outcome.refit.checkpoint]
    assert words(pasted(lines, "MLflow:  "))[-1] == f"sqlite:///{ROOT}/mlflow.db"
    assert words(pasted(lines, "Optuna:  ")) == ["optuna-dashboard", f"{ROOT}/msdn-synthetic-val/optuna.journal"]


def test_a_long_quoted_path_is_never_broken_inside_its_quotes():
    path = f"{ROOT}/{'x' * 90}/best_config.yaml"
    command = f"python -m msdn.train --dataset synthetic --config {shlex.quote(path)}"
    first, second = command_lines("  rerun it: ", command)
    assert first.endswith("--dataset synthetic \\") and second.strip().startswith("--config '")
    assert words(first.split(": ", 1)[1] + "\n" + second)[-1] == path


def test_best_config_comments_paste_and_an_object_store_checkpoint_stays_a_placeholder(outcome):
    text = best_config_text({"dataset": "synthetic", "epochs": 2, "seed": 11}, "msdn-synthetic-val", outcome.refit)
    commands = [line[len("#   "):] for line in text.splitlines() if line.startswith("#   ")]
    assert [words(c)[-2:] for c in commands] == [["--config", "best_config.yaml"]] * 2
    on_s3 = dataclasses.replace(outcome.refit, checkpoint="s3://bucket/x/refits/tuned-seed11/checkpoint.pt")
    lines = end_lines(dataclasses.replace(outcome, refits=Refits([on_s3])))
    assert words(pasted(lines, "evaluate one: "))[-2:] == ["--checkpoint", "FILE"]  # msdn.evaluate reads local files
