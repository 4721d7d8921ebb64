"""A study's options and their validation, done before anything expensive starts.

`resolve_options` checks every input cheaply (dataset, protocol, numbers, search space, data files,
tracking store, Tune storage) and fills in the defaults, so a mistake is reported in seconds,
before Ray starts. Imports stay light: Ray workers import this module (through the refit).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from msdn.config import DATASETS, PROTOCOLS
from msdn.study.search_space import SearchSpace, load_search_space


class StudyError(RuntimeError):
    """A study that cannot start: bad input, found before anything expensive."""


class StudyFailed(StudyError):
    """A study that ran but produced no result: every trial failed, or the refit failed."""


@dataclass
class StudyOptions:
    dataset: str
    search_space: Path
    num_samples: int = 12
    max_epochs: int | None = None  # default: the search space's asha.max_t
    max_concurrent: int | None = None  # default: as many trials as the cluster's resources hold
    address: str | None = None  # None: start a local Ray; "auto" or ray://... to join a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 per trial when the cluster has GPUs, else 0
    storage_path: str = "results"
    mlflow_uri: str | None = None  # None: sqlite:///<cwd>/mlflow.db
    experiment: str | None = None  # None: msdn-<dataset>-<protocol>
    protocol: str = "val"
    resume: bool = False
    seed: int = 0
    data_root: str = "data"
    refit: bool = True
    refit_seeds: int = 3  # seeds of the refit on trainval (tested once each); 1: a single refit, no interval
    baseline: bool = True  # refit the authors' configuration too, with the same seeds (a paired comparison)
    device: str = "auto"
    max_failures: int = 1  # retries of a trial whose worker died (node lost, OOM)
    tracking_timeout: float = 300.0  # seconds the study waits at its end for an unreachable MLflow store
    checkpoint_every: int = 1  # epochs between a trial's checkpoints; its last epoch is always checkpointed
    reuse_workers: bool = True  # trials run in reused worker processes (Tune's reuse_actors)
    verbose: bool = False  # Ray/Tune/MLflow/Optuna log lines and Tune's status table on the console too


def is_uri(path: str) -> bool:
    """A storage location such as s3://bucket/x rather than a local path."""
    return "://" in path


def resolve_options(opts: StudyOptions) -> tuple[StudyOptions, SearchSpace]:
    """Check every input cheaply; raise StudyError / DataError / SearchSpaceError / TrackingError."""
    from msdn.data import check_data_present
    from msdn.study import tracking

    if opts.dataset not in DATASETS:
        raise StudyError(f"--dataset {opts.dataset!r}: expected one of {', '.join(DATASETS)}")
    if opts.protocol not in PROTOCOLS:
        raise StudyError(f"--protocol {opts.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    space = load_search_space(opts.search_space, opts.dataset)
    for name, value, low in (("--num-samples", opts.num_samples, 1), ("--max-epochs", opts.max_epochs, 1),
                             ("--max-concurrent", opts.max_concurrent, 1), ("--refit-seeds", opts.refit_seeds, 1)):
        if value is not None and value < low:
            raise StudyError(f"{name} {value}: expected an integer >= {low}")
    if opts.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial {opts.cpus_per_trial}: expected a positive number of CPUs")
    if opts.gpus_per_trial is not None and opts.gpus_per_trial < 0:
        raise StudyError(f"--gpus-per-trial {opts.gpus_per_trial}: expected 0 or a positive (fractional) GPU share")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", opts.device):
        raise StudyError(f"--device {opts.device}: expected auto, cpu, cuda or cuda:N (the device inside each trial; "
                         f"auto takes the trial's GPU share when it has one)")
    if not opts.tracking_timeout >= 0:
        raise StudyError(f"--tracking-timeout {opts.tracking_timeout}: expected a number of seconds >= 0")
    check_data_present(opts.dataset, opts.data_root)
    uri = opts.mlflow_uri or tracking.default_tracking_uri()
    tracking.check_tracking_uri(uri)
    storage = opts.storage_path if is_uri(opts.storage_path) else str(Path(opts.storage_path).resolve())
    experiment = opts.experiment or f"msdn-{opts.dataset}-{opts.protocol}"
    resolved = StudyOptions(**{**asdict(opts), "mlflow_uri": uri, "storage_path": storage, "experiment": experiment,
                               "data_root": str(Path(opts.data_root).resolve()),
                               "max_epochs": opts.max_epochs or space.asha.max_t})
    if resolved.max_epochs < space.asha.grace_period:
        raise StudyError(f"--max-epochs {resolved.max_epochs} is below the ASHA grace period "
                         f"{space.asha.grace_period} of {space.path}; expected --max-epochs >= grace_period")
    if is_uri(storage):
        check_object_storage(storage)
    else:
        check_local_storage(storage)
    check_storage(resolved)
    return resolved, space


def check_local_storage(storage: str) -> None:
    """--storage-path must be a folder, or creatable as one (no file on the way, writable)."""
    path = Path(storage)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise StudyError(f"--storage-path {storage}: {existing} is a file; expected a folder (created if missing) "
                         f"where Tune keeps the study's results and checkpoints")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise StudyError(f"--storage-path {storage}: {existing} is not writable; expected a folder this user can "
                         f"write to")


# What pyarrow (Tune's storage) and boto3 (an MLflow server's artifacts) read for S3, named in errors.
S3_ENVIRONMENT = ("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or an instance role), AWS_DEFAULT_REGION, and "
                  "AWS_ENDPOINT_URL for an S3-compatible store (MinIO, Ceph, R2)")


def check_object_storage(uri: str) -> None:
    """An s3:// / gs:// --storage-path must name a bucket this machine reaches, checked before Ray starts.

    Tune opens storage URIs with pyarrow's filesystems, so the same one is asked here: a bad URI, an
    endpoint that does not answer, missing credentials or a missing bucket fail in seconds, by name.
    """
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError, NotImplementedError) as exc:
        raise StudyError(f"--storage-path {uri}: not a storage location Tune can open ({exc}); expected a "
                         f"folder, or s3://BUCKET/PREFIX or gs://BUCKET/PREFIX") from None
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise StudyError(f"--storage-path {uri}: cannot reach bucket {bucket!r} from this machine ({exc}). Expected "
                         f"the store's credentials and endpoint in the environment: {S3_ENVIRONMENT}") from None
    if info.type == pafs.FileType.NotFound:
        raise StudyError(f"--storage-path {uri}: bucket {bucket!r} does not exist (or these credentials cannot see "
                         f"it); expected an existing bucket; the study creates only the prefix")


def experiment_path(opts: StudyOptions) -> str:
    """Where Tune keeps this study: <storage path>/<experiment name>."""
    return f"{opts.storage_path.rstrip('/')}/{opts.experiment}"


def check_storage(opts: StudyOptions) -> None:
    """--resume needs an earlier study at the experiment path; a new study must not overwrite one."""
    from ray import tune

    path = experiment_path(opts)
    exists = tune.Tuner.can_restore(path)
    if opts.resume and not exists:
        raise StudyError(
            f"--resume: no study named {opts.experiment!r} under --storage-path {opts.storage_path} "
            f"(expected {path}/tuner.pkl from an earlier run with the same --experiment and --storage-path)"
        )
    if not opts.resume and exists:
        raise StudyError(
            f"a study named {opts.experiment!r} already exists at {path}; continue it with --resume, "
            f"or choose another --experiment name"
        )
