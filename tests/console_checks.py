"""What a whole study's default console and log file must hold; checked on tests/test_study.py's small study."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

CONTROL = re.compile(r"\x1b|\r")  # a redraw: escape sequences, carriage returns
# Lines Ray, Tune, MLflow and Optuna print by themselves; none belongs on the default console.
LIBRARY_MARKERS = (" INFO ", "WARNING", "Checkpoint successfully created", "== Status ==", "Trial status",
                   "[I 20", "Started a local Ray instance", "mlflow.store", "Token authentication", "(train_msdn pid=",
                   "Downloading artifacts")


def assert_console_holds_its_own_lines_and_the_log_file_the_libraries(out: subprocess.CompletedProcess,
                                                                       workdir: Path, trials: int) -> None:
    """The console: a person's width, no redraws, none of the libraries' lines, one line per trial, the report;
    the log file (its path printed): the libraries' lines and the report."""
    console = out.stdout + out.stderr
    lines = console.splitlines()
    # A person's width: only lines naming one of the user's own paths (or a command with them) may be wider.
    assert [line for line in lines if len(line) > 120 and str(workdir) not in line] == []
    assert not CONTROL.search(console)  # not a terminal: no redraws
    for marker in LIBRARY_MARKERS:
        assert marker not in console, f"{marker!r} on the console:\n{console[-4000:]}"
    ended = [re.match(r"t\d\d (\S+)  (completed|stopped early|errored) ", line) for line in lines]
    assert len({m.group(1) for m in ended if m}) == trials, console  # one line per trial
    for needle in ("top trials", "TEST (refit on trainval", "best configuration: ", "results: ", "MLflow:", "Optuna:",
                   f"trials: {trials} of {trials} ended"):
        assert needle in out.stdout, needle
    log = Path(next(line for line in lines if line.startswith("log:")).split()[1])
    assert log == workdir / "results" / "msdn-synthetic-val" / "study.log"
    text = log.read_text()
    for needle in ("Started a local Ray instance", "== Status ==", "Checkpoint successfully created",
                   "A new study created in Journal", "Ray's own logs", "TEST (refit on trainval"):
        assert needle in text, needle
