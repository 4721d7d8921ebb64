"""The cluster definitions in tune/cluster/: valid for their tools, and carrying what the study relies on."""
from pathlib import Path

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
