"""The Ray Tune trainable: one trial = one `msdn.train.Trainer` driven epoch by epoch.

Each trial receives a `DataSpec` (a few strings, through `tune.with_parameters`), not the features:
it opens the memory-mapped float16 cache itself, so all trials on a node share one copy in the
page cache. It reports every epoch's metrics, so ASHA can stop it, and a checkpoint (trainer state)
every `checkpoint_every` epochs and at its last epoch, so `Tuner.restore` can resume it. Every
evaluation also sweeps the study's settings grid (alpha x gamma): the grid's best H and the (alpha,
gamma) reaching it are reported every epoch, the whole grid (`GRID_MAP_KEYS`, for the heat map) and the
seen-unseen curve (`SU_CURVE_KEYS`, thinned for its plot) at the epochs where the study metric improves, so
that the trial's best epoch carries them.

Worker processes are reused across trials (`reuse_actors`): `WorkerCache` keeps, per process, the
opened benchmark and its splits (checked against the files' sizes and mtimes at every trial start, so
a changed file is read again) and the feature array resident on the GPU, so a trial on a warm worker
starts in milliseconds. Trials also report their setup and reporting times (`msdn.study.timing`).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msdn.checkpoint import CHECKPOINT_FILE
from msdn.study.checkpoints import restorable_checkpoint
from msdn.study.system_metrics import sampler

if TYPE_CHECKING:
    from msdn.metrics import EvalGrid

# Result keys that are lists (the calibration curve at the configured alpha: the settings grid's row there,
# msdn.metrics.gzsl_evaluate); everything else reported is a scalar.
CURVE_KEYS = ("curve_gamma", "curve_S", "curve_U", "curve_H")
# The settings grid's axes and its H (a list per alpha), reported when the study metric improves.
GRID_MAP_KEYS = ("curve_grid_alpha", "curve_grid_gamma", "curve_grid_H")
# The seen-unseen curve at the configured alpha (U, S of its states, msdn.metrics.SeenUnseenCurve), thinned to at
# most SU_CURVE_POINTS states for its plot: reported with the grid, and by each refit; AUSUC is exact regardless.
SU_CURVE_KEYS = ("curve_su_U", "curve_su_S")
SU_CURVE_POINTS = 200


@dataclass(frozen=True)
class DataSpec:
    """Where a trial finds its data; small enough to ship to every trial."""

    dataset: str
    data_root: str  # absolute path, reachable from every node that runs trials


def trial_seed(study_seed: int, sampled: dict[str, Any]) -> int:
    """A per-trial seed derived from the study seed and the trial's sampled configuration.

    Tune's trial ids are random, so they would make seeds differ between two runs of the same
    study; the configuration Optuna proposes is itself determined by the sampler seed.
    """
    digest = hashlib.sha256(json.dumps(sampled, sort_keys=True, default=str).encode()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return int(np.random.SeedSequence([study_seed, *words]).generate_state(1)[0] % (2**31 - 1))


def trial_config(base: dict[str, Any], sampled: dict[str, Any], seed: int):
    """TrainConfig of a trial: the study's fixed settings, then the sampled hyperparameters."""
    from msdn.config import TrainConfig, coerce_value

    values = {**base, **{k: coerce_value(k, v) for k, v in sampled.items()}, "seed": seed}
    return TrainConfig(**values).validate()


def on_this_worker(cfg):
    """Adapt a config to the Ray worker it runs on: its GPU share if it has one, its CPU share of threads."""
    import torch

    if cfg.device == "auto" or cfg.device.startswith("cuda"):
        cfg = cfg.replace(device="cuda" if torch.cuda.is_available() else "cpu")
    threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
    if threads > 0:  # Ray sets this from the task's CPU share; keeps trials from oversubscribing cores
        torch.set_num_threads(threads)
    return cfg


def placement() -> dict[str, str]:
    """Where this trial runs: host name, Ray node id, visible GPU ids."""
    import ray

    ctx = ray.get_runtime_context()
    return {
        "host": socket.gethostname(),
        "node_id": ctx.get_node_id(),
        "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()) or "none",
    }


def curve_lists(curve) -> dict[str, list[float]]:
    """A CalibrationCurve as plain lists under CURVE_KEYS (results and summaries must be JSON)."""
    return dict(zip(CURVE_KEYS, (curve.gammas.tolist(), curve.seen.tolist(), curve.unseen.tolist(),
                                 curve.harmonic.tolist())))


def report_metrics(metrics: dict[str, Any], curve) -> dict[str, Any]:
    """The dict a trial reports: scalar metrics plus the calibration curve as lists."""
    return {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, **curve_lists(curve)}


def seen_unseen_lists(curve) -> dict[str, list[float]]:
    """A SeenUnseenCurve as plain lists under SU_CURVE_KEYS: at most SU_CURVE_POINTS states, 5 decimals (a plot)."""
    unseen, seen = curve.thinned(SU_CURVE_POINTS)
    return dict(zip(SU_CURVE_KEYS, (unseen.round(5).tolist(), seen.round(5).tolist())))


def grid_lists(grid) -> dict[str, list]:
    """A GridResult as plain lists under GRID_MAP_KEYS; H rounded to 4 decimals (a heat map, not a selection)."""
    return dict(zip(GRID_MAP_KEYS, (grid.alphas.tolist(), grid.gammas.tolist(), grid.harmonic.round(4).tolist())))


def improves(value: Any, best: float | None, mode: str) -> bool:
    """Whether `value` is a finite number strictly better than `best` (None: nothing yet) in direction `mode`."""
    if not isinstance(value, (int, float)) or not np.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def checkpoint_due(epoch: int, last_epoch: int, every: int) -> bool:
    """Whether epoch `epoch` (1-based) is checkpointed: every `every` epochs, and always the last one.

    An interrupted trial resumes from its last checkpoint, so it redoes at most every - 1 epochs.
    """
    return epoch >= last_epoch or epoch % every == 0


def data_signature(data: DataSpec) -> tuple:
    """(path, size, mtime_ns) of each file a benchmark is read from, and of its float16 cache.

    A missing file counts as (path, None), so its appearing or disappearing changes the signature too.
    """
    from msdn.data import benchmark_paths, cache_path

    paths = benchmark_paths(data.dataset, data.data_root)
    files = [paths.hdf5, paths.att_splits, paths.res101, paths.w2v_pkl, paths.w2v_npy]
    if paths.hdf5.is_file():
        files.append(cache_path(paths.hdf5, paths.cache_dir))
    out = []
    for path in files:
        try:
            st = path.stat()
            out.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), None))
    return tuple(out)


@dataclass
class WorkerCache:
    """What a worker process keeps between the trials it runs (Tune reuses it: `reuse_actors`).

    The benchmark is read once per (dataset, data root), and each split once per (protocol,
    val_fraction, val_seed) too. Every trial start stats the files again (`data_signature`, well under a
    millisecond) and reads them again when one changed. The resident GPU copy of the features follows
    the benchmark it was made from.
    """

    trials: int = 0  # trials started in this process
    last_report_at: float | None = None  # wall time of the last tune.report of this process's trials
    benchmarks: dict[tuple, tuple] = field(default_factory=dict)  # (dataset, root) -> (signature, Benchmark)
    splits: dict[tuple, Any] = field(default_factory=dict)  # (dataset, root, protocol, fraction, seed) -> split
    resident: dict[tuple, Any] = field(default_factory=dict)  # (dataset, root, device) -> (Benchmark, tensor)

    def open(self, data: DataSpec, protocol: str, val_fraction: float, val_seed: int):
        """(benchmark, split), from this process's cache when the files are unchanged."""
        from msdn.data import load_benchmark, make_split

        key = (data.dataset, data.data_root)
        signature = data_signature(data)  # taken before reading: a change while reading reloads next time
        held = self.benchmarks.get(key)
        if held is None or held[0] != signature:
            self.benchmarks.pop(key, None)  # let the old memory map go before opening the new one
            self.splits = {k: v for k, v in self.splits.items() if k[:2] != key}
            self.resident = {k: v for k, v in self.resident.items() if k[:2] != key}
            held = (signature, load_benchmark(data.dataset, data.data_root, progress=None))
            self.benchmarks[key] = held
        bench = held[1]
        split_key = (*key, protocol, val_fraction, val_seed)
        if split_key not in self.splits:
            self.splits[split_key] = make_split(bench, protocol, val_fraction=val_fraction, seed=val_seed)
        return bench, self.splits[split_key]

    def resident_features(self, data: DataSpec, bench, device: str):
        """The features already on `device` (a --device string) from an earlier trial on the same benchmark, or None."""
        from msdn.device import resolve_device

        held = self.resident.get((data.dataset, data.data_root, str(resolve_device(device))))
        return held[1] if held is not None and held[0] is bench else None

    def keep_resident(self, data: DataSpec, bench, trainer) -> None:
        """Remember the trainer's resident features (one array per benchmark and device) for the next trial."""
        if trainer.features_on_device is not None:
            self.resident[(data.dataset, data.data_root, str(trainer.device))] = (bench, trainer.features_on_device)


WORKER = WorkerCache()  # this process's cache; a fresh worker starts empty


def trial_gpu_share(context) -> float | None:
    """The trial's GPU share from its Tune resources (e.g. 0.5), or None when it has no GPU."""
    try:
        gpus = float(context.get_trial_resources().required_resources.get("GPU", 0))
    except (AttributeError, RuntimeError, TypeError, ValueError):  # not under Tune (direct calls): no share known
        return None
    return gpus or None


def release_cached_device_memory() -> None:
    """Hand PyTorch's cached but unused GPU blocks back to the device (a no-op without CUDA)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_msdn(config: dict[str, Any], *, data: DataSpec, base: dict[str, Any], study_seed: int,
               checkpoint_every: int = 1, eval_grid: EvalGrid | None = None, metric: str = "H_grid",
               mode: str = "max") -> None:
    """Function trainable: train, report each epoch (with a checkpoint when due), resume from the last one.

    `eval_grid` (a msdn.metrics.EvalGrid) is swept at every evaluation; the whole grid is reported at the
    epochs where `metric` improves in direction `mode`.
    """
    entered = time.time()
    from ray import tune

    from msdn.study import timing
    from msdn.train import Trainer

    worker = WORKER
    worker.trials += 1
    start = {timing.WORKER_TRIAL: worker.trials, timing.TIME_WORKER_START: 0.0, timing.TIME_WORKER_IDLE: 0.0}
    if worker.trials == 1:
        born = timing.process_start_time()
        ready = time.time()
        start[timing.TIME_WORKER_START] = ready - born if born is not None else 0.0
        start[timing.WORKER_READY_AT] = ready
    elif worker.last_report_at is not None:
        start[timing.TIME_WORKER_IDLE] = max(0.0, entered - worker.last_report_at)

    context = tune.get_context()
    system = sampler()  # this node's CPU, memory and GPU figures, reported with every epoch (system_metrics)
    system.reset()
    cfg = on_this_worker(trial_config(base, config, trial_seed(study_seed, config)))
    opened = time.perf_counter()
    bench, split = worker.open(data, cfg.protocol, cfg.val_fraction, cfg.val_seed)
    built = time.perf_counter()
    if worker.trials > 1:
        release_cached_device_memory()  # the previous trial's blocks, so the budget reads what is free
    trainer = Trainer(cfg, bench, split, progress=None, gpu_share=trial_gpu_share(context),
                      resident_features=worker.resident_features(data, bench, cfg.device), eval_grid=eval_grid)
    worker.keep_resident(data, bench, trainer)
    where = placement()

    storage = context.get_storage()
    checkpoint, ahead = restorable_checkpoint(tune.get_checkpoint(), storage.trial_fs_path, storage.storage_filesystem)
    if ahead:
        print(f"trial {context.get_trial_id()}: resuming from {checkpoint.path}, newer than Tune's record of the "
              "study names", flush=True)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(Path(directory) / CHECKPOINT_FILE)
    start[timing.TIME_DATA_OPEN] = built - opened
    start[timing.TIME_TRAINER_BUILD] = time.perf_counter() - built

    previous = {timing.TIME_CHECKPOINT: 0.0, timing.TIME_REPORT: 0.0}
    best = None
    for earlier in trainer.history[:-1] if ahead else trainer.history:  # epochs restored (and reported before)
        best = earlier[metric] if improves(earlier.get(metric), best, mode) else best

    def report(metrics: dict[str, Any], force_checkpoint: bool = False) -> None:
        """Report one epoch (its training_iteration is its epoch), with a checkpoint when due."""
        nonlocal best, start, previous
        result = report_metrics(metrics, trainer.last_result.curve)
        if improves(metrics.get(metric), best, mode):
            best = metrics[metric]
            result.update(grid_lists(trainer.last_result.grid))
            result.update(seen_unseen_lists(trainer.last_result.seen_unseen))
        result.update({"training_iteration": trainer.epoch, "trial_seed": cfg.seed,
                       **{f"placement_{k}": v for k, v in where.items()}, **start, **previous, **system.take()})
        start = {}
        began = time.perf_counter()
        if force_checkpoint or checkpoint_due(trainer.epoch, cfg.epochs, checkpoint_every):
            with tempfile.TemporaryDirectory() as directory:
                trainer.save(Path(directory) / CHECKPOINT_FILE, trial_id=context.get_trial_id())
                saved = time.perf_counter()
                worker.last_report_at = result[timing.REPORTED_AT] = time.time()
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            saved = began
            worker.last_report_at = result[timing.REPORTED_AT] = time.time()
            tune.report(result)
        previous = {timing.TIME_CHECKPOINT: saved - began, timing.TIME_REPORT: time.perf_counter() - saved}

    if ahead and trainer.history:
        # Tune's record ends before this checkpoint: report the epochs it may lack (Tune's scheduler, the
        # searcher and the MLflow callback ignore epochs they already have; results keep the first row of
        # an epoch), the last one evaluated again for its curve, with a checkpoint Tune's record names.
        for earlier in trainer.history[:-1]:
            tune.report({**{k: v for k, v in earlier.items() if isinstance(v, (int, float))},
                         "training_iteration": int(earlier["epoch"]), "trial_seed": cfg.seed})
        trainer.last_result = trainer.evaluate()
        report(trainer.history[-1], force_checkpoint=True)
    for metrics in trainer.run():
        report(metrics)
