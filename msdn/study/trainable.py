"""The Ray Tune trainable: one trial = one `msdn.train.Trainer` driven epoch by epoch.

Each trial receives a `DataSpec` (a few strings, through `tune.with_parameters`), not the features:
it opens the memory-mapped float16 cache itself, so all trials on a node share one copy in the
page cache. After every epoch it reports the epoch's metrics and a checkpoint (trainer state),
so ASHA can stop it and `Tuner.restore` can resume it.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_FILE = "trainer.pt"
# Result keys that are lists (the calibration curve); everything else reported is a scalar.
CURVE_KEYS = ("curve_gamma", "curve_S", "curve_U", "curve_H")


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


def train_msdn(config: dict[str, Any], *, data: DataSpec, base: dict[str, Any], study_seed: int) -> None:
    """Function trainable: train, report each epoch with a checkpoint, resume from the last one."""
    from ray import tune

    from msdn.data import load_benchmark, make_split
    from msdn.train import Trainer

    context = tune.get_context()
    cfg = on_this_worker(trial_config(base, config, trial_seed(study_seed, config)))
    bench = load_benchmark(data.dataset, data.data_root, progress=None)
    split = make_split(bench, cfg.protocol, val_fraction=cfg.val_fraction, seed=cfg.val_seed)
    trainer = Trainer(cfg, bench, split, progress=None)
    where = placement()

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(Path(directory) / CHECKPOINT_FILE)

    for metrics in trainer.run():
        result = report_metrics(metrics, trainer.last_result.curve)
        result.update({"trial_seed": cfg.seed, **{f"placement_{k}": v for k, v in where.items()}})
        with tempfile.TemporaryDirectory() as directory:
            trainer.save(Path(directory) / CHECKPOINT_FILE, trial_id=context.get_trial_id())
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))

