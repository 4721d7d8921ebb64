"""What a Ray cluster can ever offer one trial, checked before anything starts on it.

A trial is one placement-group bundle (`tune.with_resources`), so its CPUs and GPUs must sit on one node:
a live node, or a node type the cluster's autoscaler may start. When none can hold it, Tune would wait
for it without end (Ray's "No available node types can fulfill resource request" every 30 s), so the
study refuses it first, naming --cpus-per-trial / --gpus-per-trial and what the largest node has.

Where the autoscaler's node types come from (Ray 2.60 has no public API for them):
- the cluster config an autoscaler reports to the GCS (a private name: `ray_private.reported_cluster_config`;
  Ray Train and Ray Data read it for the same check; Ray 2.60's own autoscalers do not report it yet,
  newer ones and hosted platforms do);
- the cluster launcher's config on the head node (`~/ray_bootstrap_config.yaml`, written by `ray up`;
  Tune's `_is_ray_cluster` looks for the same file), where `ray job submit` runs the driver.
A joined cluster whose node types are visible in neither place (KubeRay, hand-started nodes) gets a
bounded wait instead: the autoscaler is asked for one trial's node (`ray.autoscaler.sdk.request_resources`,
public) and the study waits up to NODE_WAIT_S seconds for it to join. A local Ray never grows: no wait.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from msdn.progress import Progress
from msdn.study.options import StudyError

NODE_WAIT_ENV = "MSDN_NODE_WAIT_S"  # overrides NODE_WAIT_S (seconds; 0: no wait)
NODE_WAIT_S = 300.0  # a cloud GPU node boots, or a worker pod pulls its image, within minutes
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"


@dataclass(frozen=True)
class NodeShape:
    """What one node offers a trial: a live node, or a node type the cluster's autoscaler may start."""

    name: str
    cpus: float
    gpus: float

    def holds(self, resources: dict[str, float]) -> bool:
        return self.cpus >= resources["cpu"] and self.gpus >= resources["gpu"]

    def __str__(self) -> str:
        return f"{self.name} {self.cpus:g} CPUs, {self.gpus:g} GPUs"


def live_nodes() -> list[NodeShape]:
    """The alive nodes and their total CPUs and GPUs."""
    import ray

    return [NodeShape(f"node {n.get('NodeManagerAddress', '?')}", float(n.get("Resources", {}).get("CPU", 0)),
                      float(n.get("Resources", {}).get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def autoscaler_node_types() -> list[NodeShape] | None:
    """The node types the cluster's autoscaler may start, or None when this driver cannot see them."""
    types = _reported_node_types()
    return types if types is not None else launcher_node_types(Path(LAUNCHER_CONFIG).expanduser())


def _reported_node_types() -> list[NodeShape] | None:
    from msdn.study.ray_private import reported_cluster_config

    config = reported_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return [NodeShape(f"node type {group.name}", float(group.resources.get("CPU", 0)),
                      float(group.resources.get("GPU", 0)))
            for group in config.node_group_configs if group.max_count != 0]


def launcher_node_types(path: Path) -> list[NodeShape] | None:
    """available_node_types of a cluster launcher config: the head's type and the worker types it may start.

    None when the file is missing or unreadable, or a type's resources are not written down (it might hold
    anything; `ray up` fills them in for the clouds it knows).
    """
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    node_types = config.get("available_node_types") if isinstance(config, dict) else None
    if not isinstance(node_types, dict) or not node_types:
        return None
    shapes = []
    for name, spec in node_types.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("resources"), dict):
            return None
        if name != config.get("head_node_type") and spec.get("max_workers", config.get("max_workers", 0)) == 0:
            continue  # a worker type the autoscaler may never start
        shapes.append(NodeShape(f"node type {name}", float(spec["resources"].get("CPU", 0)),
                                float(spec["resources"].get("GPU", 0))))
    return shapes


def check_trial_fits(resources: dict[str, float], *, joined: bool, progress: Progress = print) -> None:
    """Refuse (StudyError) a trial of `resources` ({"cpu", "gpu"}) that no node can ever hold.

    `joined`: the study joined a cluster (--address), which may still gain nodes; a local Ray never does.
    """
    nodes = live_nodes()
    if any(node.holds(resources) for node in nodes):
        return
    types = autoscaler_node_types()
    if types is not None and any(shape.holds(resources) for shape in types):
        return  # the autoscaler starts one when the first trial asks
    waited = None
    if joined and types is None:
        waited = node_wait_seconds()
        if _wait_for_node(resources, waited, progress):
            return
        nodes = live_nodes()
    raise StudyError(no_node_message(resources, nodes, types, waited))


def node_wait_seconds() -> float:
    text = os.environ.get(NODE_WAIT_ENV, "").strip()
    try:
        seconds = float(text) if text else NODE_WAIT_S
    except ValueError:
        seconds = float("nan")
    if not 0 <= seconds < float("inf"):
        raise StudyError(f"{NODE_WAIT_ENV}={text}: expected a finite number of seconds >= 0")
    return seconds


def _wait_for_node(resources: dict[str, float], seconds: float, progress: Progress) -> bool:
    """Ask the autoscaler for one trial's node; wait up to `seconds` for a live node that holds it.

    Ctrl+C / SIGTERM end the wait at once (the study's handler raises KeyboardInterrupt outside Tune).
    """
    if seconds <= 0:
        return False
    from ray.autoscaler.sdk import request_resources

    if progress:
        progress(f"no node of the cluster can hold one trial ({resources['cpu']:g} CPUs and {resources['gpu']:g} GPUs "
                 f"on one node) yet, and its autoscaler's node types are not visible from here: asking for such a "
                 f"node and waiting up to {seconds:.0f} s for it to join ({NODE_WAIT_ENV} sets the wait)")
    bundle = {key: value for key, value in (("CPU", resources["cpu"]), ("GPU", resources["gpu"])) if value > 0}
    try:
        request_resources(bundles=[bundle])
    except Exception:  # only a hint to an autoscaler; a cluster without one ignores it anyway
        pass
    deadline = time.monotonic() + seconds
    try:
        while True:
            if any(node.holds(resources) for node in live_nodes()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(2.0, left))
    finally:
        try:
            request_resources(bundles=[])  # withdrawn: from here on the trials' own requests speak
        except Exception:
            pass


def no_node_message(resources: dict[str, float], nodes: list[NodeShape], types: list[NodeShape] | None,
                    waited: float | None) -> str:
    """Which flag asks for more than any node offers, what the largest node has, and what would fit."""
    cpu, gpu = resources["cpu"], resources["gpu"]
    shapes = nodes + (types or [])
    most_cpus = max((s.cpus for s in shapes), default=0.0)
    most_gpus = max((s.gpus for s in shapes), default=0.0)
    too_many = [f"--cpus-per-trial {cpu:g}"] * (cpu > most_cpus) + [f"--gpus-per-trial {gpu:g}"] * (gpu > most_gpus)
    flags = " and ".join(too_many) or f"--cpus-per-trial {cpu:g} with --gpus-per-trial {gpu:g}"
    largest = max(nodes, key=lambda s: (s.cpus, s.gpus), default=None)
    have = f"the largest node has {largest.cpus:g} CPUs and {largest.gpus:g} GPUs" if largest else "it has no live node"
    if len(nodes) > 1:
        have += f" ({len(nodes)} live nodes: {'; '.join(str(n) for n in nodes[:4])}{'; ...' if len(nodes) > 4 else ''})"
    if types:
        have += f"; the node types its autoscaler may start offer: {'; '.join(str(t) for t in types[:4])}"
    elif types is not None:
        have += "; its autoscaler may start no other node type"
    elif waited is not None:
        have += (f"; no such node joined within {waited:.0f} s (its autoscaler's node types are not visible from "
                 f"here; {NODE_WAIT_ENV} sets the wait)")
    if too_many:
        wanted = " and ".join([f"--cpus-per-trial <= {most_cpus:g}"] * (cpu > most_cpus)
                              + [f"--gpus-per-trial <= {most_gpus:g}"] * (gpu > most_gpus))
    else:
        wanted = "a CPU and GPU share that one node holds together"
    if gpu > 0:
        wanted += " (a GPU share may be a fraction, such as 0.5, for trials that share a GPU)"
    return (f"{flags}: no node of this Ray cluster can ever hold one trial, which needs {cpu:g} CPUs and {gpu:g} GPUs "
            f"on one node; {have}. Expected {wanted}, or a cluster with a larger node (--address).")
