"""The README's quick start, run as written: the same argv, in a fresh working directory.

Only two things differ from a user's shell: `python` is this interpreter, and `tune/run.py` is given
by its absolute path (the user runs it from the clone; the test runs from a temporary folder so that
nothing is written into the checkout). The MLflow UI command gets `--port` only when port 5000 is taken.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow_server import free_port

REPO = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: no bash block under '## Quick start'"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def as_run_here(argv: list[str]) -> list[str]:
    assert argv[0] == "python", argv
    return [sys.executable, *[str(REPO / a) if a == "tune/run.py" else a for a in argv[1:]]]


def test_the_quick_start_is_three_commands_of_this_project():
    commands = quick_start_commands()
    assert [c[:3] for c in commands] == [["python", "-m", "msdn.train"], ["python", "tune/run.py", "--dataset"],
                                         ["mlflow", "ui", "--backend-store-uri"]]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_quick_start_commands_run_as_written(tmp_path):
    train, study, ui = quick_start_commands()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    out = subprocess.run(as_run_here(train), cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert len(re.findall(r"^epoch +\d+/5 ", out.stdout, re.M)) == 5, out.stdout[-2000:]
    assert (tmp_path / "data" / "SYNTHETIC" / ".complete").is_file()  # generated on first use, under ./data

    out = subprocess.run(as_run_here(study), cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=env)
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-4000:]
    assert "12 trials:" in console and "top trials" in console and "TEST (refit on trainval" in console
    # measured as in a user's clone (~/msdn-tune), not pytest's long temporary folder
    wide = [line for line in console.replace(str(tmp_path), "~/msdn-tune").splitlines() if len(line) > 120]
    assert not wide, f"{len(wide)} console lines wider than 120 columns, e.g. {wide[0]!r}"
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "results" / "msdn-synthetic-val").is_dir()

    port = 5000 if _port_free(5000) else None
    argv = ui if port else [*ui, "--port", str(free_port())]
    port = port or int(argv[-1])
    server = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"},
                              start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=msdn-synthetic-val"
        deadline, answer = time.monotonic() + 120, None
        while time.monotonic() < deadline and answer is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    answer = json.loads(response.read())
            except OSError:
                assert server.poll() is None, f"mlflow ui exited with {server.returncode}"
                time.sleep(1)
        assert answer and answer["experiment"]["name"] == "msdn-synthetic-val", answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)

