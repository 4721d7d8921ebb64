"""A study's options: what the user asked for (`StudyRequest`) and what the study runs with (`StudyOptions`).

Each option is one field of `StudyRequest`, and the field carries everything about it: type, default,
its flag's group, help and metavar, the values it accepts, and why `--resume` must keep it, if it must
(`Flag`; msdn.study.started compares those with what the study was started with). tune/run.py's parser
is derived from the fields (`add_flags`), the parsed flags become a request by name
(`StudyRequest(**vars(args))`), and a request checks every value as it is made (a `StudyError` naming the
flag). `resolve_options` then checks what needs a look outside (search space, data files, tracking store,
Tune storage, and that no other process runs the study: its lock, msdn.study.lock) and fills in
every default: a `StudyOptions` holds no unresolved None, so later code never meets one.

    request = StudyRequest(dataset="synthetic", num_samples=4)   # StudyError on a bad value
    opts, space = resolve_options(request)                       # before Ray starts, in seconds

Imports stay light: Ray workers import this module (through the refit).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import numbers
import os
import re
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from msdn.config import DATASETS, PROTOCOLS
from msdn.study.search_space import SearchSpace, load_search_space

# The repository's search spaces, beside msdn/ (tune/run.py runs from a checkout, importing msdn from it).
SEARCH_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
NAME_BYTES = 200  # longest --experiment: a folder name (at most 255 bytes) with room for "<name>.study.log"
LOCK_NAME = "study.lock"  # in the study's folder: held while a process runs the study (msdn.study.lock)
URI_LOCKS = Path.home() / ".cache" / "msdn-tune" / "locks"  # this machine's locks of studies on object storage
JOURNAL_FILE = "optuna_study.journal"  # the study's Optuna journal, in its folder (experiment_path)


class StudyError(RuntimeError):
    """A study that cannot start: bad input, found before anything expensive."""


class StudyFailed(StudyError):
    """A study that ran but produced no result: every trial failed, or the refit failed."""


@dataclass(frozen=True)
class Flag:
    """An option's flag on tune/run.py and the values it accepts; every number must also be finite."""

    group: str  # its section of --help
    help: str
    metavar: str | None = None
    unset: str | None = None  # what None means, in words: the default of an option whose default is None
    short: str | None = None  # a one-letter alias, e.g. -v
    negated: bool = False  # a switch that turns a True default off: --no-refit gives refit=False
    choices: tuple[str, ...] | None = None
    low: float | None = None  # the smallest value allowed
    above: bool = False  # `low` itself is not allowed (> low rather than >= low)
    check: Callable[[Any], str | None] | None = None  # a further check: the error's text after the value, or None
    # Why --resume refuses another value than the study was started with (None: it may change on --resume and
    # takes effect). The study keeps what it started with in study_request.json (msdn.study.started).
    kept: str | None = None
    many: bool = False  # the flag takes one or more values: one study each (tune/run.py; msdn.study.multirun)


def option(default: Any, group: str, help: str, **flag: Any) -> Any:
    """A StudyRequest field with its flag (`default` MISSING: a required flag)."""
    return field(default=default, metadata={"flag": Flag(group, help, **flag)})


def device_problem(device: str) -> str | None:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        return None
    return ("expected auto, cpu, cuda or cuda:N (the device inside each trial; auto takes the trial's GPU share "
            "when it has one)")


def name_problem(name: str) -> str | None:
    """Why `name` cannot name one folder directly under its root (so it can never lead outside), or None."""
    if not name.strip():
        found = "is empty"
    elif name in (".", ".."):
        found = "names the root folder itself or the one above it"
    elif "/" in name or "\\" in name:
        found = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        found = "contains a control character"
    elif len(name.encode()) > NAME_BYTES:
        found = f"is longer than {NAME_BYTES} bytes"
    else:
        return None
    return (f"{found}; expected a plain name without / or \\ (it becomes the study's folder under --storage-path "
            f"and its MLflow experiment), e.g. msdn-cub-val")


@dataclass(frozen=True)
class StudyRequest:
    """A study as the user asked for it: every flag of tune/run.py, None where the default is decided later.

    Fields are in --help order; making one checks every value (StudyError naming the flag).
    """

    dataset: str = option(MISSING, "data", "benchmark(s) to tune on: with several, one study each, in this order, in "
                          "one Ray session", choices=DATASETS, many=True,
                          kept="the trials so far trained on this benchmark")
    data_root: str = option("data", "data", "folder holding the benchmarks", metavar="DIR")

    search_space: Path | None = option(None, "study", "YAML search space", metavar="FILE",
                                       unset="search_spaces/<dataset>.yaml in this repository",
                                       kept="Tune and Optuna keep the space the study started with; its content is "
                                            "compared, the file may move")
    num_samples: int = option(12, "study", "number of trials", metavar="N", low=1,
                              kept="Tune keeps the number of trials it was started with")
    max_epochs: int | None = option(None, "study", "epochs per trial", metavar="N", low=1,
                                    unset="the search space's asha.max_t",
                                    kept="ASHA keeps its max_t, and the trials so far trained to it")
    protocol: str = option("val", "study", "val: tune on a validation split, refit and test once; paper: the "
                           "authors' test-every-epoch procedure", choices=PROTOCOLS,
                           kept="the trials so far were trained and measured on its split")
    seed: int = option(0, "study", "study seed (per-trial seeds derive from it)", metavar="N", low=0,
                       kept="the trials' and the refits' seeds derive from it")
    resume: bool = option(False, "study", "continue the study with this --experiment and --storage-path")
    warm_start: Path | None = option(None, "study", "an earlier study's result folder (<storage-path>/<experiment>): "
                                     "for the same benchmark and search space its trials enter as evidence, else its "
                                     "best configurations are tried first", metavar="PATH", unset="a cold start")
    transfer: bool = option(False, "study", "with several --dataset values: warm-start each study from the one before")
    experiment: str | None = option(None, "study", "study name = MLflow experiment and the study's folder under "
                                    "--storage-path", metavar="NAME", unset="msdn-<dataset>-<protocol>",
                                    check=name_problem)
    refit: bool = option(True, "study", "skip retraining the best configuration on trainval", negated=True)
    refit_seeds: int = option(3, "study", "seeds of the refit on trainval, each tested once: mean, sd and 95% "
                              "interval of the test figures (1: a single refit, no interval)", metavar="N", low=1,
                              kept="the parent run records it; the test figures come from the seeds the study "
                                   "planned, not from seeds added after seeing them")
    baseline: bool = option(True, "study", "do not refit the authors' configuration with the same seeds (the "
                            "paired comparison)", negated=True, kept="the parent run records it")
    checkpoint_every: int = option(1, "study", "epochs between a trial's checkpoints (its last epoch is always "
                                   "checkpointed); an interrupted trial redoes at most N - 1 epochs",
                                   metavar="N", low=1)

    address: str | None = option(None, "cluster", "Ray cluster to join ('auto' inside a cluster, or "
                                 "ray://HOST:10001)", unset="start a local one")
    cpus_per_trial: float = option(1.0, "cluster", "CPU cores per trial", metavar="CPUS", low=0, above=True)
    gpus_per_trial: float | None = option(None, "cluster", "GPU share per trial, fractions allowed", metavar="GPUS",
                                          low=0, unset="1 when the cluster has GPUs, else 0")
    max_concurrent: int | None = option(None, "cluster", "trials running at once", metavar="N", low=1,
                                        unset="as many as the cluster's resources hold",
                                        kept="Tune restores the study's concurrency limit")
    max_failures: int = option(1, "cluster", "retries of a trial whose worker or node died", metavar="N", low=0)
    reuse_workers: bool = option(True, "cluster", "start a fresh worker process for every trial instead of reusing "
                                 "them", negated=True, kept="Tune restores it with the study's settings")
    storage_path: str = option("results", "cluster", "where Tune keeps results and checkpoints (path or s3://, "
                               "gs://)", metavar="PATH")
    device: str = option("auto", "cluster", "device inside each trial (auto: its GPU share if any, else CPU)",
                         check=device_problem)

    mlflow_uri: str | None = option(None, "tracking", "MLflow tracking URI; http://HOST:PORT for a server",
                                    metavar="URI", unset="sqlite:///<working dir>/mlflow.db",
                                    kept="the study's parent run and trial runs are in that store")
    tracking_timeout: float = option(300.0, "tracking", "seconds to wait at the end for an unreachable MLflow "
                                     "store before giving up (exit 3)", metavar="SECONDS", low=0)

    verbose: bool = option(False, "output", "also show Ray, Tune, MLflow and Optuna log lines and Tune's status "
                           "table (always in the log file)", short="-v")

    def __post_init__(self) -> None:
        for f in FIELDS:  # defined below, once the class exists
            problem = value_problem(f, getattr(self, f.name))
            if problem:
                raise StudyError(problem)


@dataclass(frozen=True, kw_only=True)
class StudyOptions(StudyRequest):
    """A study as it runs (`resolve_options`): every default filled in, local paths absolute.

    Still None by design: `address` (a local Ray), and `gpus_per_trial` and `max_concurrent`, which the
    cluster decides once Ray runs (msdn.study.cluster).
    """

    search_space: Path = field()
    max_epochs: int = field()
    experiment: str = field()
    mlflow_uri: str = field()
    storage_path: str = field()  # absolute, or a URI (s3://, gs://)
    data_root: str = field()  # absolute

    def __post_init__(self) -> None:
        super().__post_init__()
        unresolved = [name for name in StudyOptions.__annotations__ if getattr(self, name) is None]
        if unresolved or not (is_uri(self.storage_path) or os.path.isabs(self.storage_path)) \
                or not os.path.isabs(self.data_root):  # a bug, not bad input: made by with_defaults only
            raise ValueError(f"unresolved study options: {', '.join(unresolved) or 'relative paths'} "
                             f"(storage_path={self.storage_path!r}, data_root={self.data_root!r})")


FIELDS: tuple[Field, ...] = fields(StudyRequest)
# A field's type without None (str, int, float, bool or Path), and whether None is allowed.
KINDS: dict[str, tuple[type, bool]] = {
    name: (next(t for t in typing.get_args(hint) or (hint,) if t is not type(None)),
           type(None) in typing.get_args(hint))
    for name, hint in typing.get_type_hints(StudyRequest).items()
}


def flag_names(f: Field) -> list[str]:
    """The field's flag, long name last: ["-v", "--verbose"], ["--no-refit"], ["--num-samples"]."""
    flag: Flag = f.metadata["flag"]
    long = "--" + ("no-" if flag.negated else "") + f.name.replace("_", "-")
    return [flag.short, long] if flag.short else [long]


def value_problem(f: Field, value: Any) -> str | None:
    """Why `value` cannot be the field's value, as an error naming its flag; None when it can."""
    flag: Flag = f.metadata["flag"]
    name = flag_names(f)[-1]
    kind, optional = KINDS[f.name]
    if value is None:
        return None if optional else f"{name}: a value is required"
    is_bool = isinstance(value, bool)
    if kind is bool:
        expected = None if is_bool else "true or false"
    elif kind is int:
        expected = None if isinstance(value, numbers.Integral) and not is_bool else "an integer"
    elif kind is float:
        expected = None if isinstance(value, numbers.Real) and not is_bool else "a number"
    elif kind is Path:
        expected = None if isinstance(value, (str, os.PathLike)) else "a path"
    else:
        expected = None if isinstance(value, str) else "a string"
    if expected:
        return f"{name} {value!r}: expected {expected}"
    if kind in (int, float):
        bound = "" if flag.low is None else f" {'>' if flag.above else '>='} {flag.low:g}"
        too_low = flag.low is not None and (value <= flag.low if flag.above else value < flag.low)
        if not math.isfinite(value) or too_low:
            return f"{name} {value}: expected {'an integer' if kind is int else 'a finite number'}{bound}"
    if flag.choices is not None and value not in flag.choices:
        return f"{name} {value!r}: expected one of {', '.join(flag.choices)}"
    problem = flag.check(value) if flag.check else None
    return f"{name} {value!r}: {problem}" if problem else None


def add_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add a flag for every StudyRequest field to `parser`, in argument groups; its dests are the field names."""
    groups: dict[str, Any] = {}
    for f in FIELDS:
        flag: Flag = f.metadata["flag"]
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        kind, _ = KINDS[f.name]
        text = flag.help.replace("%", "%%") + (f" (default: {flag.unset})" if flag.unset else "")
        if kind is bool:
            action = "store_false" if flag.negated else "store_true"
            groups[flag.group].add_argument(*flag_names(f), dest=f.name, action=action, default=f.default, help=text)
            continue
        extra: dict[str, Any] = {"required": True} if f.default is MISSING else {"default": f.default}
        if flag.many:
            extra["nargs"] = "+"
        groups[flag.group].add_argument(*flag_names(f), dest=f.name, type=None if kind is str else kind,
                                        choices=flag.choices, metavar=flag.metavar, help=text, **extra)
    return parser


# Flags that name one study's files: with several benchmarks each study takes its own default.
ONE_STUDY_FLAGS = {"experiment": "--experiment", "search_space": "--search-space"}


def study_requests(request: StudyRequest, datasets: Sequence[str]) -> list[StudyRequest]:
    """One request per benchmark (several --dataset values: msdn.study.multirun); StudyError for a repeated
    benchmark or a flag that names one study's files."""
    repeated = sorted({d for d in datasets if list(datasets).count(d) > 1})
    if repeated:
        raise StudyError(f"--dataset {' '.join(datasets)}: {', '.join(repeated)} given twice; expected each benchmark "
                         "once (one study each)")
    if len(datasets) > 1:
        for name, flag in ONE_STUDY_FLAGS.items():
            if getattr(request, name) is not None:
                raise StudyError(f"{flag} names one study's files, but --dataset gives {len(datasets)} benchmarks; "
                                 f"leave {flag} out: each study then takes its own (msdn-<dataset>-<protocol>, "
                                 "search_spaces/<dataset>.yaml)")
    if request.transfer and len(datasets) < 2:
        raise StudyError("--transfer warm-starts each study from the one before; expected several --dataset values")
    return [replace(request, dataset=d) for d in datasets]


def requests_from_flags(values: dict[str, Any]) -> list[StudyRequest]:
    """The parsed flags of tune/run.py (`vars(args)`; --dataset a list) as one request per benchmark."""
    datasets = values["dataset"]
    return study_requests(StudyRequest(**{**values, "dataset": datasets[0]}), datasets)


def is_uri(path: str) -> bool:
    """A storage location such as s3://bucket/x rather than a local path."""
    return "://" in path


def search_space_file(request: StudyRequest) -> Path:
    """--search-space, or by default the repository's search_spaces/<dataset>.yaml."""
    return Path(request.search_space or SEARCH_SPACES / f"{request.dataset}.yaml")


def with_defaults(request: StudyRequest, max_t: int) -> StudyOptions:
    """`request` with every default filled in and its local paths made absolute; nothing is checked.

    `max_t`: the search space's asha.max_t, the default of max_epochs.
    """
    from msdn.study.tracking import default_tracking_uri

    storage = request.storage_path if is_uri(request.storage_path) else str(Path(request.storage_path).resolve())
    given = {f.name: getattr(request, f.name) for f in FIELDS}
    return StudyOptions(**{
        **given,
        "search_space": search_space_file(request),
        "max_epochs": max_t if request.max_epochs is None else request.max_epochs,
        "experiment": request.experiment or f"msdn-{request.dataset}-{request.protocol}",
        "mlflow_uri": request.mlflow_uri or default_tracking_uri(),
        "storage_path": storage,
        "data_root": str(Path(request.data_root).resolve()),
    })


def resolve_options(opts: StudyRequest) -> tuple[StudyOptions, SearchSpace]:
    """Check every input cheaply, fill in the defaults; raise StudyError / DataError / SearchSpaceError / TrackingError.

    The values themselves were checked when `opts` was made; here what they point at is.
    """
    from msdn.data import check_data_present
    from msdn.study import tracking

    space = load_search_space(search_space_file(opts), opts.dataset)
    check_data_present(opts.dataset, opts.data_root)
    resolved = with_defaults(opts, space.asha.max_t)
    tracking.check_tracking_uri(resolved.mlflow_uri)
    if resolved.max_epochs < space.asha.grace_period:
        raise StudyError(f"--max-epochs {resolved.max_epochs} is below the ASHA grace period "
                         f"{space.asha.grace_period} of {space.path}; expected --max-epochs >= grace_period")
    if is_uri(resolved.storage_path):
        check_object_storage(resolved.storage_path)
    else:
        check_local_storage(resolved.storage_path)
    check_storage(resolved)
    if resolved.warm_start is not None and not resolved.resume:  # a resumed study holds its warm start already
        from msdn.study.warm_start import WarmStartError, load_earlier_study

        try:
            load_earlier_study(resolved.warm_start, JOURNAL_FILE)
        except WarmStartError as exc:  # no folder, no journal, not a readable one
            raise StudyError(str(exc)) from None
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


def lock_path(opts: StudyOptions) -> Path:
    """The study's lock file (msdn.study.lock): in its folder for a local --storage-path; for object storage, which
    has no file locks, a file of this machine's named after the study's URI."""
    if is_uri(opts.storage_path):
        digest = hashlib.sha256(experiment_path(opts).encode()).hexdigest()[:16]
        return URI_LOCKS / f"{opts.experiment}-{digest}.lock"
    return Path(experiment_path(opts)) / LOCK_NAME


def running_error(opts: StudyOptions, holder: str) -> StudyError:
    """The refusal of a second start while the process `holder` (what its lock file says) runs the study."""
    return StudyError(
        f"the study {opts.experiment!r} ({experiment_path(opts)}) is running now ({holder or 'who, not known yet'}; "
        f"lock file {lock_path(opts)}). A second start of it is refused; nothing was written. Wait for it to end, "
        f"or stop it (Ctrl+C in its terminal, or kill its pid on its host) and continue it with the same command "
        f"plus --resume; or start another study with another --experiment")


def check_storage(opts: StudyOptions, *, locked: bool = False) -> None:
    """No other process runs this study now; --resume needs an earlier study at the experiment path; a new study
    must not overwrite one. `locked`: this process holds the study's lock (msdn.study.lock) and checks again."""
    from ray import tune

    from msdn.fsutil import lock_holder

    holder = None if locked else lock_holder(lock_path(opts))
    if holder is not None:  # the same command again while the study runs: say so, not "use --resume"
        raise running_error(opts, holder)
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
