"""A real MLflow tracking server on loopback for tests: SQLite backend, stoppable and restartable."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all bound at once, so the OS cannot hand out one twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class MlflowServer:
    """`mlflow server` with its store in `workdir/<db>`, artifacts in a local folder or `artifacts` (e.g. s3://)."""

    def __init__(self, workdir: Path, *, db: str = "server.db", artifacts: str | None = None,
                 env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> None:
        self.workdir = workdir
        self.extra_args = list(extra_args or [])  # more `mlflow server` flags, e.g. --registry-store-uri
        self.db = workdir / db
        self.artifacts = artifacts
        self.env = env
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "mlflow_server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        artifacts = (["--artifacts-destination", self.artifacts] if self.artifacts
                     else ["--default-artifact-root", str(self.workdir / "mlartifacts")])
        # Without MLflow 3's job runner (a Huey consumer and periodic tasks, for GenAI jobs no study uses): it costs
        # about 25 CPU-seconds per server start on two cores, and tests start and restart many servers.
        env = {**(self.env if self.env is not None else os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.db}", *artifacts, "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1", *self.extra_args],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, http.client.HTTPException):  # not up yet, or another service's port
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server on {self.uri} did not come up; see {self.log}")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (SIGKILL with `kill`, or when it does not end) to the server's process group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None
