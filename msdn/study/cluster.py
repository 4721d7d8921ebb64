"""The Ray side of a study: connecting, sizing trials, and checking every node before trials start.

Before anything is started on it, the cluster must be able to hold a trial at all: `connect_ray` probes
an `--address` for a Ray head in seconds (Ray's own connect retries a dead address without end), and
`trial_resources` refuses a trial shape (`--cpus-per-trial`, `--gpus-per-trial`) that no node has or
can ever get: Tune would wait for it forever.

On a multi-node cluster, Tune's storage and the data root must be reachable from every node;
`check_cluster_storage_and_data` proves it (a probe file or, for s3:// / gs://, a probe object that
each node reads with its own credentials; a data load per node) and builds each
node's feature cache once, so a misconfigured cluster fails in seconds with a message saying why.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from msdn.progress import Progress
from msdn.study.capacity import check_trial_fits
from msdn.study.options import S3_ENVIRONMENT, StudyError, StudyOptions, is_uri

ADDRESS_TIMEOUT_S = 5.0  # a Ray head answers the probe in milliseconds; a firewall drops it silently
ADDRESS_EXPECTED = ("expected the Ray head's GCS address HOST:PORT (port 6379 unless `ray start --head --port` chose "
                    "another), 'auto' on a node of the cluster, or ray://HOST:10001 for Ray Client")


def connect_ray(address: str | None, log_to_driver: bool = True) -> str | None:
    """Join the cluster at `address`, or start a local Ray when it is None (once per process).

    Returns Ray's session folder (its logs are under it), or None when this process had joined Ray before.
    A cluster that cannot be joined is a StudyError naming --address, in seconds.
    """
    import ray

    if ray.is_initialized():
        return None
    # Tune records every trial's error itself (its error file, the console); without this Ray prints a failed
    # trial's traceback once more at exit, after the study's own one-paragraph error.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    if address:
        check_ray_address(address)
        try:
            context = ray.init(address=address, log_to_driver=log_to_driver)
        except (ConnectionError, RuntimeError, ValueError) as exc:  # e.g. Ray Client's timeout, another Ray version
            raise StudyError(f"--address {address}: cannot join the Ray cluster there ({_first_line(exc)}); "
                             f"{ADDRESS_EXPECTED}") from None
    else:
        if os.environ.get("RAY_ADDRESS"):  # ray.init() joins it instead of starting a local Ray
            check_ray_address(os.environ["RAY_ADDRESS"], "the environment variable RAY_ADDRESS")
        context = ray.init(include_dashboard=False, log_to_driver=log_to_driver)
    return (getattr(context, "address_info", None) or {}).get("session_dir")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_ray_address(address: str, name: str = "--address") -> None:
    """A Ray head (or a Ray Client server, for ray://) must answer at `address` within ADDRESS_TIMEOUT_S.

    One gRPC call (the GCS's GetClusterId): a head answers it, or refuses it for want of the auth token,
    which proves a head all the same; ray.init then does the real joining.
    """
    if "://" in address and not address.startswith("ray://"):
        raise StudyError(f"{name} {address}: not an address a study can join; {ADDRESS_EXPECTED}. An http:// "
                         f"address is the dashboard's, for `ray job submit --address`.")
    if os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true"):
        return  # a TLS head refuses a plaintext probe; ray.init, with Ray's certificates, is the only check then
    target = address
    if address == "auto":
        target = _auto_address(name)
        if target is None:
            return  # this Ray cannot say what 'auto' means: ray.init alone decides
    client = target.startswith("ray://")
    hostport = target[len("ray://"):] if client else target
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"{name} {address}: no port given; {ADDRESS_EXPECTED}")
    code, detail = _grpc_probe(hostport, ADDRESS_TIMEOUT_S)
    shown = address if target == address else f"{address} ({target})"
    if code == "OK" or code == "UNAUTHENTICATED" or (client and code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")):
        return  # a head (refusing a call without the cluster's auth token is a head too), or a Ray Client server
    if code == "DEADLINE_EXCEEDED":
        why = f"no answer within {ADDRESS_TIMEOUT_S:.0f} s"
    elif "resolving" in detail:
        why = f"cannot resolve the host name {host!r}"
    else:
        why = detail.rsplit(": ", 1)[-1] if "last error" in detail else f"{code}: {detail}"
    if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and "HTTP/2" not in detail:
        raise StudyError(f"{name} {shown}: no Ray cluster answers there ({why}); {ADDRESS_EXPECTED}. Is the cluster "
                         f"running (`ray status` on its head node) and the port reachable from here?")
    raise StudyError(f"{name} {shown}: something answers there, but not a Ray head ({why}); {ADDRESS_EXPECTED} "
                     f"(a Ray Client port needs the ray:// prefix)")


def _auto_address(name: str) -> str | None:
    """What 'auto' means to ray.init: RAY_ADDRESS, or the cluster last started on this machine (Ray 2.60's
    private `canonicalize_bootstrap_address`, the function ray.init itself calls; None without it)."""
    from msdn.study.ray_private import auto_address_resolver

    canonicalize_bootstrap_address = auto_address_resolver()
    if canonicalize_bootstrap_address is None:
        return None
    try:
        target = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as exc:
        raise StudyError(f"{name} auto: {_first_line(exc)}; start one with `ray start --head`, or "
                         f"{ADDRESS_EXPECTED}") from None
    if not target:
        raise StudyError(f"{name} auto: found no running Ray cluster on this machine; {ADDRESS_EXPECTED}")
    return target


def _grpc_probe(hostport: str, timeout: float) -> tuple[str, str]:
    """(gRPC status name, details) of one GetClusterId call to `hostport` (a GCS answers OK)."""
    import grpc

    # Ray's own connections ignore http(s)_proxy; so does the probe.
    channel = grpc.insecure_channel(hostport, options=[("grpc.enable_http_proxy", 0)])
    call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId", request_serializer=lambda m: m,
                               response_deserializer=lambda b: b)
    try:
        call(b"", timeout=timeout)  # an empty GetClusterIdRequest
        return "OK", ""
    except grpc.RpcError as exc:
        return exc.code().name, (exc.details() or "").strip()
    finally:
        channel.close()


def trial_resources(opts: StudyOptions, progress: Progress = print) -> dict[str, float]:
    """CPU and GPU share of one trial: the flags, or one GPU per trial when the cluster has GPUs.

    Refused (StudyError) when no node of the cluster can ever hold it (`check_trial_fits`).
    """
    import ray

    gpus_available = ray.cluster_resources().get("GPU", 0)
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else (1.0 if gpus_available else 0.0)
    resources = {"cpu": opts.cpus_per_trial, "gpu": gpus}
    check_trial_fits(resources, joined=bool(opts.address), progress=progress)
    return resources


def default_concurrency(resources: dict[str, float]) -> int:
    """How many trials of `resources` the whole cluster holds at once (at least one)."""
    import ray

    total = ray.cluster_resources()
    fit = int(total.get("CPU", 1) // resources["cpu"])
    if resources["gpu"] > 0:
        fit = min(fit, int(total.get("GPU", 0) // resources["gpu"]))
    return max(fit, 1)


def _on_every_node(fn: Callable, *args) -> dict[str, Any]:
    """Run `fn(*args)` once on each alive node; returns {node id: result or the exception}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    remote = ray.remote(num_cpus=0)(fn)
    refs = {node: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(*args)
            for node in nodes}
    out = {}
    for node, ref in refs.items():
        try:
            out[node] = ray.get(ref)
        except Exception as exc:  # a node that cannot do it is reported, not fatal here
            out[node] = exc
    return out


def _probe_exists(path: str) -> bool:
    return Path(path).is_file()


def _probe_object_exists(uri: str) -> bool:
    """Whether this node reads the probe object at `uri`, with its own credentials and endpoint."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def _reason(outcome: Any) -> str:
    """Why a node failed a check, in one line: the task's own exception, not Ray's wrapper and traceback."""
    if not isinstance(outcome, Exception):
        return "the probe is not there"
    cause = getattr(outcome, "cause", None) or outcome
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"


def _check_local_storage_shared(opts: StudyOptions, node_count: int) -> None:
    """A --storage-path folder must be the same shared folder on every node: a probe file the driver writes."""
    import uuid

    probe = Path(opts.storage_path) / f".msdn-storage-probe-{uuid.uuid4().hex}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("written by the study driver; every node must see this file\n")
    try:
        seen = _on_every_node(_probe_exists, str(probe))
    finally:
        probe.unlink(missing_ok=True)
    blind = [node[:12] for node, ok in seen.items() if ok is not True]
    if blind:
        raise StudyError(
            f"--storage-path {opts.storage_path} is local to the driver's node: {len(blind)} of {len(seen)} "
            f"nodes of this {node_count}-node cluster cannot see it (node ids {', '.join(blind)}). Tune keeps "
            f"results and checkpoints there, so every node must reach it: expected a shared filesystem "
            f"path mounted at the same place on every node (NFS, EFS, a Kubernetes volume), or an "
            f"s3:// / gs:// URI."
        )


def _check_object_storage_shared(opts: StudyOptions, node_count: int) -> None:
    """An s3:// / gs:// --storage-path must be reachable from every node (trials upload checkpoints from
    where they run): the driver writes a probe object, a task on each node reads it back."""
    import uuid

    import pyarrow.fs as pafs

    uri = f"{opts.storage_path.rstrip('/')}/.msdn-storage-probe-{uuid.uuid4().hex}"
    fs, path = pafs.FileSystem.from_uri(uri)
    try:
        with fs.open_output_stream(path) as out:
            out.write(b"written by the study driver; every node must read this object\n")
    except OSError as exc:
        raise StudyError(f"--storage-path {opts.storage_path}: the driver cannot write there ({exc}); expected "
                         f"credentials that may write to the bucket: {S3_ENVIRONMENT}") from None
    try:
        seen = _on_every_node(_probe_object_exists, uri)
    finally:
        try:
            fs.delete_file(path)
        except OSError:
            pass  # a probe left behind is harmless; the study's own check already passed or failed
    blind = {node[:12]: _reason(ok) for node, ok in seen.items() if ok is not True}
    if blind:
        first = next(iter(blind.items()))
        raise StudyError(
            f"--storage-path {opts.storage_path} is not reachable from {len(blind)} of {len(seen)} nodes of this "
            f"{node_count}-node cluster (node ids {', '.join(blind)}; node {first[0]}: {first[1]}). Trials write "
            f"their checkpoints there from the node they run on, so every node needs the store's credentials and "
            f"endpoint in the environment `ray start` runs with: {S3_ENVIRONMENT}."
        )


def _prepare_node_data(dataset: str, data_root: str) -> str:
    """Validate the data and build (once, under the cache's file lock) the memory-mapped cache on this node."""
    import socket

    from msdn.data import load_benchmark

    bench = load_benchmark(dataset, data_root, progress=None)
    return f"{socket.gethostname()}: {bench.features.shape[0]} images"


def check_cluster_storage_and_data(opts: StudyOptions, progress: Progress = print) -> None:
    """On a multi-node cluster, refuse node-local storage and make sure every node has the data."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    if is_uri(opts.storage_path):
        _check_object_storage_shared(opts, len(nodes))
    else:
        _check_local_storage_shared(opts, len(nodes))
    results = _on_every_node(_prepare_node_data, opts.dataset, opts.data_root)
    failed = {node[:12]: str(r) for node, r in results.items() if isinstance(r, Exception)}
    if failed:
        first = next(iter(failed.items()))
        raise StudyError(
            f"--data-root {opts.data_root}: {len(failed)} of {len(results)} nodes cannot load the {opts.dataset} "
            f"data (node {first[0]}: {first[1]}). Expected the data root on a filesystem every node mounts at the "
            f"same path; each node builds or reuses the float16 cache there under a file lock."
        )
    if progress:
        progress(f"cluster of {len(nodes)} nodes: storage and data reachable from every node "
                 f"({'; '.join(str(r) for r in results.values())})")


def cluster_tags() -> dict[str, str]:
    """The cluster a study ran on, for the parent run's tags: alive nodes, CPUs, GPUs."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    return {"ray.nodes": str(len(nodes)), "ray.cpus": str(resources.get("CPU", 0)),
            "ray.gpus": str(resources.get("GPU", 0))}
