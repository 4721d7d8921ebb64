"""A real two-node Ray cluster, started the way the launcher YAML starts it, and a real MLflow server.

The nodes run the YAML's own `head_start_ray_commands` / `worker_start_ray_commands`
(tune/cluster/gpu-cluster.yaml) in a clean environment: a home folder of their own (holding `~/venv`,
a link to the test's venv, and `~/.ray/auth_token`, as the YAML's setup and file mounts leave them)
and a system `PATH` without the venv. Only what must differ on loopback is substituted: ports,
addresses, temp dirs, per-node limits, and no `ray stop` (on this shared machine it would stop every
Ray). So a job's `python` is whatever the YAML's commands make it, as on a real cluster.

Everything started is stopped by `stop()`, even after a failure: only this cluster's processes, found
by a marker in their environment (which Ray's daemons, workers and job drivers inherit) and by
descent, never other Ray clusters of this machine.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from mlflow_server import MlflowServer, free_ports

BIN = Path(sys.executable).parent
VENV = Path(sys.prefix)
REPO = Path(__file__).resolve().parents[1]
LAUNCHER_YAML = REPO / "tune" / "cluster" / "gpu-cluster.yaml"
README = REPO / "README.md"
# What a fresh cloud node's login shell has on PATH: no venv, no pyenv shims.
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARKER = "MSDN_LOOPBACK_CLUSTER"  # in the environment of every process this cluster starts


def launcher_start_commands(key: str) -> list[str]:
    """`head_start_ray_commands` or `worker_start_ray_commands` of the launcher YAML, as written."""
    return list(yaml.safe_load(LAUNCHER_YAML.read_text())[key])


def loopback_command(command: str, gcs_port: int, extra: list[str]) -> str | None:
    """One of the YAML's start commands with only the loopback differences substituted.

    None for `ray stop`: a no-op on a new node, but here it would end every Ray process of the machine.
    The GCS port 6379 becomes `gcs_port`, the dashboard listens on loopback instead of 0.0.0.0, the
    autoscaler config (a cloud provider's) is left out, and `extra` (ports, temp dir, limits) follows
    `ray start`.
    """
    if re.search(r"\bray stop\b", command):
        return None
    if not re.search(r"\bray start\b", command):
        return command
    out = re.sub(r"\b6379\b", str(gcs_port), command)
    out = out.replace("--dashboard-host=0.0.0.0", "--dashboard-host=127.0.0.1")
    out = re.sub(r"\s--autoscaling-config=\S+", "", out)
    out = re.sub(r"\bray start\b", lambda m: f"{m.group(0)} {shlex.join(extra)}", out, count=1)
    assert "0.0.0.0" not in out, f"a start command would listen beyond loopback: {out}"
    return out


def readme_submit_command(submit: dict[str, str], study: dict[str, str], extra: list[str]) -> list[str]:
    """The README's `ray job submit ... -- python tune/run.py ...` command, with flag values replaced.

    `submit` replaces values of `ray job submit` flags (before `--`), `study` those of tune/run.py (after
    it), and `extra` flags are appended. Every flag named must be in the README's command, so a changed
    README fails here loudly instead of testing something else.
    """
    text = README.read_text()
    section = text[text.index("## Run on a cluster"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: no bash block under '## Run on a cluster'"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    line = next((line for line in lines if "ray job submit" in line), None)
    assert line, "README.md: the cluster section's bash block has no `ray job submit` command"
    argv = shlex.split(line, comments=True)
    cut = argv.index("--")
    head, entrypoint = argv[:cut], argv[cut + 1:]
    for part, values in ((head, submit), (entrypoint, study)):
        for flag, value in values.items():
            assert flag in part, f"README.md's submit command has no {flag}: {line}"
            part[part.index(flag) + 1] = value
    return [*head, "--", *entrypoint, *extra]


def _proc_table() -> dict[int, tuple[int, bytes, str]]:
    """pid -> (parent pid, environment block, command line) of every process readable in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z":  # a zombie is already dead; only its parent can reap it
                continue
            table[int(entry.name)] = (int(fields[1]), (entry / "environ").read_bytes(),
                                      (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError, IndexError):
            continue
    return table


class LoopbackCluster:
    def __init__(self, workdir: Path, *, cpus_per_node: int = 1, memory_bytes: int = 3 * 10**9,
                 node_env: dict[str, str] | None = None, mlflow_artifacts: str | None = None) -> None:
        """`node_env`: extra environment of every node (what a cloud node would have, e.g. S3 credentials);
        `mlflow_artifacts`: the tracking server's --artifacts-destination (default: a local folder)."""
        self.workdir = workdir
        self.cpus = cpus_per_node
        self.memory = memory_bytes
        self.gcs_port, self.dashboard_port = free_ports(2)
        self.id = uuid.uuid4().hex
        # The node's home as the YAML's setup leaves it: ~/venv (here: the test's venv) and the shared token.
        self.home = workdir / "home"
        (self.home / ".ray").mkdir(parents=True)
        (self.home / "venv").symlink_to(VENV)
        self.token = self.home / ".ray" / "auth_token"
        self.token.write_text(uuid.uuid4().hex)
        self.node_env = {
            "HOME": str(self.home), "PATH": CLEAN_PATH, "LANG": "C.UTF-8", "USER": os.environ.get("USER", "root"),
            "RAY_HEAD_IP": "127.0.0.1",  # set by the cluster launcher on every node
            "RAY_USAGE_STATS_ENABLED": "0", MARKER: self.id, **(node_env or {}),
        }
        # The client (`ray job submit`, the test's own queries, the MLflow server): the test's environment.
        self.env = {
            **os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1", MARKER: self.id, **(node_env or {}),
        }
        # Ray's socket paths must stay under 107 bytes: session dirs go in a short folder of their own.
        self.session_root = Path(tempfile.mkdtemp(prefix="msdnrc-", dir="/tmp"))
        self.temp_dir = self.session_root / "head"
        self.mlflow = MlflowServer(workdir, db="mlflow.db", artifacts=mlflow_artifacts, env=self.env)
        self.workers = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow.uri

    def ray(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return out

    def _loopback_args(self, temp_dir: Path) -> list[str]:
        """What a node needs here and not on a cloud node: its own ports, temp dir and limits."""
        return [f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}",
                f"--memory={self.memory}", "--object-store-memory=150000000", "--disable-usage-stats",
                *(f"--{name}-port={port}" for name, port in zip(
                    ("dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export", "runtime-env-agent",
                     "node-manager", "object-manager"), free_ports(6)))]

    def _run_node_commands(self, key: str, extra: list[str], env: dict[str, str], wrap=lambda script: script) -> None:
        for command in launcher_start_commands(key):
            script = loopback_command(command, self.gcs_port, extra)
            if script is None:
                continue
            out = subprocess.run(["bash", "-c", wrap(script)], env=env, capture_output=True, text=True, timeout=180,
                                 start_new_session=True)
            if out.returncode != 0:
                raise RuntimeError(f"{key} command failed ({out.returncode}): {script}\n"
                                   f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    def start(self) -> "LoopbackCluster":
        self._run_node_commands("head_start_ray_commands",
                                [*self._loopback_args(self.temp_dir), f"--dashboard-port={self.dashboard_port}"],
                                self.node_env)
        self.start_worker()
        self.wait_for_nodes(2)
        self.mlflow.start(timeout=90)
        return self

    @property
    def node_local_dir(self) -> Path:
        """A folder the head sees but the worker node does not (a tmpfs over it in the worker's mount namespace)."""
        return self.workdir / "node_local"

    def start_worker(self, env: dict[str, str] | None = None, resource: str = "worker_node") -> None:
        """A worker node from the YAML's worker commands, in its own mount namespace: like a second machine,
        it cannot see `node_local_dir`. `env` overrides the node's environment (a misconfigured node)."""
        self.node_local_dir.mkdir(exist_ok=True)
        self.workers += 1
        extra = [*self._loopback_args(self.session_root / f"worker{self.workers}"), f'--resources={{"{resource}": 1}}']
        mount = f"mount -t tmpfs none {shlex.quote(str(self.node_local_dir))}"
        self._run_node_commands(
            "worker_start_ray_commands", extra, {**self.node_env, **(env or {})},
            wrap=lambda script: shlex.join(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                                            f"{mount} || exit 1; {script}"]),
        )

    def alive_nodes(self) -> list[dict]:
        code = ("import json, ray; ray.init(address='%s', logging_level='ERROR'); "
                "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
                "for n in ray.nodes()]))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
        return [n for n in json.loads(lines[-1]) if n["alive"]] if lines else []

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.alive_nodes()) >= count:
                return
            time.sleep(2)
        raise RuntimeError(f"the Ray cluster at {self.address} did not reach {count} nodes in {timeout} s")

    def processes(self) -> dict[int, str]:
        """Every live process this cluster started (pid -> command line): the marker in its environment,
        or a descendant of such a process."""
        table = _proc_table()
        marker = f"{MARKER}={self.id}".encode()
        ours = {pid for pid, (_, environ, _) in table.items() if marker in environ.split(b"\0")}
        grew = True
        while grew:
            children = {pid for pid, (ppid, _, _) in table.items() if ppid in ours and pid not in ours}
            ours |= children
            grew = bool(children)
        ours.discard(os.getpid())
        return {pid: table[pid][2] for pid in ours}

    def worker_raylet_pids(self, resource: str = "worker_node") -> list[int]:
        """Process ids of this cluster's raylet started with `resource` (the worker node)."""
        return [pid for pid, cmd in self.processes().items() if "raylet" in cmd.split(" ")[0] and resource in cmd]

    def kill_worker_node(self) -> None:
        for pid in self.worker_raylet_pids():
            os.kill(pid, signal.SIGKILL)

    def submit(self, working_dir: Path, entrypoint: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
        """`ray job submit` (waits for the job and streams its logs), exactly as a user types it."""
        return self.run_client(["ray", "job", "submit", "--address", self.dashboard, "--working-dir", str(working_dir),
                                "--", *entrypoint], cwd=working_dir, timeout=timeout)

    def run_client(self, argv: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
        """A command on the user's machine (the test's venv on PATH, the cluster's token)."""
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def stop(self) -> None:
        """End this cluster's processes only (MLflow, Ray daemons, workers, job drivers), never another's."""
        self.mlflow.stop(kill=True)  # the test is over: nothing to save
        # SIGKILL, as `ray stop --force` does, but only to this cluster's processes; again for any that a
        # dying parent started meanwhile.
        deadline = time.time() + 30
        pids = self.processes()
        while pids and time.time() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
            pids = self.processes()
        subprocess.run(["umount", "-l", str(self.node_local_dir)], capture_output=True)  # in case it leaked here
        shutil.rmtree(self.session_root, ignore_errors=True)
