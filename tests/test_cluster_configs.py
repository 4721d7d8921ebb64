"""The cluster definitions (tune/cluster/, the Dockerfile): valid for their tools, consistent with each other, and
carrying what the study relies on."""
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "tune" / "cluster"


def test_launcher_yaml_passes_rays_own_schema_check():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "gpu-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on a schema violation
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types and gpu_types[0]["max_workers"] > gpu_types[0]["min_workers"]  # autoscaling GPU workers
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0  # the head runs no trials
    assert any("pip install -e ~/msdn-tune" in c for c in config["setup_commands"])
    assert config["file_mounts"]["/home/ubuntu/msdn-tune"] == "."
    # token authentication: one token on every node, token mode for every `ray start`
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert any("mount" in c and "/mnt/efs" in c for c in config["setup_commands"])  # shared storage
    assert {".venv", "data", "results"} <= set(config["rsync_exclude"])


def test_rayjob_manifest_fields():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    entry = spec["entrypoint"]
    assert entry.startswith("python tune/run.py") and "--address auto" in entry
    assert "--storage-path /shared/" in entry and "--data-root /shared/" in entry and "--mlflow-uri http://" in entry
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
    cluster = spec["rayClusterSpec"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0],
                  spec["submitterPodTemplate"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ray-auth-token", c["name"]
    gpu = cluster["workerGroupSpecs"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["maxReplicas"] > gpu["minReplicas"]
    for pod in [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]:
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert "/shared" in mounts  # storage and data every node reaches


def test_rayignore_keeps_heavy_and_private_files_out_of_uploads():
    ignored = set((CLUSTER.parents[1] / ".rayignore").read_text().split())
    assert {".venv/", "data/", "results/", "mlflow.db", "mlruns/"} <= ignored


# --- the launcher's start commands: the project's environment is the one every job and worker uses ----


def test_launcher_start_commands_put_the_venv_first_on_path_before_ray_start():
    # A job's entrypoint (`python tune/run.py ...`) runs through a shell with the raylet's PATH; without
    # the venv there, `python` is not found on a fresh node (tests/test_cluster.py runs these commands).
    config = yaml.safe_load((CLUSTER / "gpu-cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        before = start[:start.index("ray start")]
        assert 'PATH="$HOME/venv/bin:$PATH"' in before, (key, start)
    assert any("python3 -m venv ~/venv" in c for c in config["setup_commands"])


# --- the container image (Dockerfile) and the RayJob that runs it -------------------------------------

REPO = CLUSTER.parents[1]


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def dockerfile_args() -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in dockerfile() if word == "ARG" and "=" in rest)


def test_image_is_the_official_ray_gpu_image_of_the_pinned_ray_and_python():
    steps = dockerfile()
    ray_version = dockerfile_args()["RAY_VERSION"]
    base = next(rest for word, rest in steps if word == "FROM").replace("${RAY_VERSION}", ray_version)
    assert base == f"rayproject/ray:{ray_version}-py311-gpu"
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray_version  # KubeRay and the image agree
    from packaging.specifiers import SpecifierSet

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "3.11" in SpecifierSet(project["requires-python"])
    ray_req = next(d for d in project["dependencies"] if d.startswith("ray["))
    assert ray_version in SpecifierSet(ray_req[ray_req.index("]") + 1:])  # the image's Ray satisfies the project


def test_image_installs_the_project_into_its_own_python_at_the_rayjobs_working_dir():
    steps = dockerfile()
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    working_dir = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    assert [rest for word, rest in steps if word == "WORKDIR"] == [working_dir]
    runs = [rest for word, rest in steps if word == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert installs and all("venv" not in r for r in runs)  # the image's Python, no virtual environment
    assert any("-e ." in r and "ray==${RAY_VERSION}" in " ".join(runs) for r in installs)  # Ray kept as the image has it
    copies = [rest for word, rest in steps if word == "COPY"]
    assert copies[-1].endswith(". .")  # the whole (filtered) repository at the working dir
    assert any("tune/run.py --help" in r for r in runs)  # the RayJob's entrypoint starts in the image
    # every container of the RayJob runs that image, and its entrypoint is relative to the working dir
    cluster = job["spec"]["rayClusterSpec"]
    pods = [job["spec"]["submitterPodTemplate"]["spec"], cluster["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]
    images = {p["containers"][0]["image"] for p in pods}
    assert len(images) == 1 and images.pop().endswith("/msdn-tune:0.1.0")
    assert job["spec"]["entrypoint"].startswith("python tune/run.py ")
    assert (REPO / "tune" / "run.py").is_file()
    for pod in pods:  # object-storage credentials, when the user created the secret
        assert {"secretRef": {"name": "msdn-s3", "optional": True}} in pod["containers"][0]["envFrom"]


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerignored(relpath: str) -> bool:
    """Whether docker's build context leaves `relpath` out (its .dockerignore rules, without `!` exceptions)."""
    import fnmatch

    parts = relpath.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]  # a folder's rule covers what is in it
    for pattern in dockerignore_patterns():
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if any(fnmatch.fnmatch(part, tail) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_dockerignore_keeps_data_results_venvs_and_mlflow_files_out_and_the_code_in():
    for path in (".git/config", ".venv/bin/python", "data/CUB/res101.mat", "results/msdn-cub-val/tuner.pkl",
                 "mlruns/0/meta.yaml", "mlartifacts/1/x.png", "mlflow.db", "msdn/__pycache__/config.cpython-311.pyc",
                 "msdn_tune.egg-info/PKG-INFO", "checkpoint.pt", "data/zsl/feature_cache.npy"):
        assert dockerignored(path), path
    for path in ("pyproject.toml", "README.md", "msdn/study/runner.py", "tune/run.py", "search_spaces/cub.yaml",
                 "tune/cluster/rayjob.yaml"):
        assert not dockerignored(path), path
