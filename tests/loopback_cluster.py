"""A real two-node Ray cluster and a real MLflow server on loopback, for the cluster tests.

Both Ray nodes run on this machine as separate raylets (separate ports, explicit CPU and memory
limits); the head keeps its session files in its own temp dir. Token authentication stays on, as
Ray 2.59+ sets it up: one token file, named by RAY_AUTH_TOKEN_PATH for every Ray command.
Everything started is stopped by `stop()`, by process id and with `ray stop`, even after a failure.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    def __init__(self, workdir: Path, *, cpus_per_node: int = 1, memory_bytes: int = 3 * 10**9) -> None:
        self.workdir = workdir
        self.cpus = cpus_per_node
        self.memory = memory_bytes
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.mlflow_port = free_port()
        self.token = workdir / "ray_token"
        self.token.write_text(uuid.uuid4().hex)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
        # Ray's socket paths must stay under 107 bytes: session dirs go in a short folder of their own.
        self.session_root = Path(tempfile.mkdtemp(prefix="msdnrc-", dir="/tmp"))
        self.temp_dir = self.session_root / "head"
        self.mlflow_proc: subprocess.Popen | None = None
        self.worker_started = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def ray(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return out

    def _node_ports(self) -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]

    def _limits(self) -> list[str]:
        return ["--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}", f"--memory={self.memory}",
                "--object-store-memory=150000000", "--disable-usage-stats"]

    def start(self) -> "LoopbackCluster":
        self.ray("start", "--head", f"--port={self.gcs_port}", f"--temp-dir={self.temp_dir}",
                 "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                 *self._limits(), *self._node_ports())
        self.start_worker()
        self.wait_for_nodes(2)
        self.start_mlflow()
        return self

    @property
    def node_local_dir(self) -> Path:
        """A folder the head sees but the worker node does not (a tmpfs over it in the worker's mount namespace)."""
        return self.workdir / "node_local"

    def start_worker(self) -> None:
        """The worker node, in its own mount namespace: like a second machine, it cannot see `node_local_dir`."""
        self.node_local_dir.mkdir(exist_ok=True)
        args = [str(BIN / "ray"), "start", f"--address={self.address}", f"--temp-dir={self.session_root / 'worker'}",
                *self._limits(), *self._node_ports(), '--resources={"worker_node": 1}']
        script = f"mount -t tmpfs none {shlex.quote(str(self.node_local_dir))} && exec {shlex.join(args)}"
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                             env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"starting the worker node failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        self.worker_started = True

    def alive_nodes(self) -> list[dict]:
        code = ("import json, ray; ray.init(address='%s', logging_level='ERROR'); "
                "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
                "for n in ray.nodes()]))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        import json

        lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
        return [n for n in json.loads(lines[-1]) if n["alive"]] if lines else []

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.alive_nodes()) >= count:
                return
            time.sleep(2)
        raise RuntimeError(f"the Ray cluster at {self.address} did not reach {count} nodes in {timeout} s")

    def worker_raylet_pids(self) -> list[int]:
        """Process ids of the worker node's raylet (the one started with the worker_node resource)."""
        out = subprocess.run(["pgrep", "-f", "raylet.*worker_node"], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill_worker_node(self) -> None:
        for pid in self.worker_raylet_pids():
            os.kill(pid, signal.SIGKILL)

    def start_mlflow(self) -> None:
        log = open(self.workdir / "mlflow_server.log", "w")
        self.mlflow_proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
             "--default-artifact-root", str(self.workdir / "mlartifacts"), "--host", "127.0.0.1",
             "--port", str(self.mlflow_port), "--workers", "1"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.mlflow_uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"mlflow server on {self.mlflow_uri} did not come up; see {self.workdir / 'mlflow_server.log'}")

    def submit(self, working_dir: Path, entrypoint: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
        """`ray job submit` (waits for the job and streams its logs), exactly as a user types it."""
        return subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--working-dir", str(working_dir),
             "--", *entrypoint],
            env=self.env, capture_output=True, text=True, timeout=timeout, cwd=working_dir,
        )

    def stop(self) -> None:
        if self.mlflow_proc is not None and self.mlflow_proc.poll() is None:
            os.killpg(self.mlflow_proc.pid, signal.SIGTERM)
            try:
                self.mlflow_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.mlflow_proc.pid, signal.SIGKILL)
        # `ray stop` ends every Ray process of this machine's user; the tests run one cluster at a time.
        self.ray("stop", "--force", timeout=120, check=False)
        subprocess.run(["umount", "-l", str(self.node_local_dir)], capture_output=True)  # in case it leaked here
        shutil.rmtree(self.session_root, ignore_errors=True)
