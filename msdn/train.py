"""Train MSDN on pre-extracted region features and evaluate it with the GZSL protocol every epoch.

    python -m msdn.train --dataset synthetic --epochs 5
    python -m msdn.train --dataset cub --data-root DIR --epochs 30 --json
    python -m msdn.train --dataset cub --config my.yaml --lambda-dis 0.01 --checkpoint run.pt --resume

Every field of `msdn.config.TrainConfig` is a flag (`--lambda-cal`, `--lr-v-factor`, ...); a YAML
file given with `--config` sets fields too, and flags win over it. An "epoch" is, as in the authors'
scripts, n_train / batch_size iterations of randomly drawn batches; evaluation follows each epoch.

`Trainer` is the reusable loop: `for metrics in trainer.run(): ...` yields one dict per epoch, and
`trainer.state_dict()` / `load_state_dict()` make it resumable (the Ray Tune trainable drives it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .config import DATASETS, FIELD_NAMES, TrainConfig, coerce_value, default_config, overrides_from_yaml
from .data import DataError, check_data_present, load_benchmark, make_split, read_rows
from .device import resolve_device
from .evaluate import evaluate_model
from .fsutil import atomic_path
from .losses import LossTerms
from .metrics import GZSLResult
from .model import MSDN
from .progress import Progress, to_stderr
from .step import build_optimizer, train_step

CHECKPOINT_VERSION = 1
# Keep the training features on the GPU when they take at most this share of its free memory.
GPU_FEATURE_SHARE = 0.5


class Trainer:
    """One MSDN training run: model, optimiser, batch sampler, per-epoch evaluation, checkpoint state."""

    def __init__(self, config: TrainConfig, bench=None, split=None, *, progress: Progress = print):
        self.config = config.validate()
        self.device = resolve_device(config.device)
        self.bench = bench if bench is not None else load_benchmark(config.dataset, config.data_root, progress=progress)
        self.split = split if split is not None else make_split(
            self.bench, config.protocol, val_fraction=config.val_fraction, seed=config.val_seed
        )
        n_channels = self.bench.features.shape[-1]
        generator = torch.Generator().manual_seed(config.seed)
        self.model = MSDN(
            self.bench.w2v_att, self.split.att, self.split.seen, n_channels,
            normalize_v=config.normalize_v, margin=config.margin, generator=generator,
        ).to(self.device)
        self.optimizer = build_optimizer(self.model, config)
        self.rng = np.random.default_rng(config.seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.last_result: GZSLResult | None = None
        self.train_idx = np.asarray(self.split.train_idx)
        self.labels = torch.as_tensor(self.split.labels, dtype=torch.long, device=self.device)
        self.gammas = config.gamma_grid()
        self._by_class = self._train_images_by_class() if config.balanced_batches else None
        self.features_on_device = self._features_to_device()

    # -- data ---------------------------------------------------------------------------------
    def _train_images_by_class(self) -> list[np.ndarray]:
        labels = self.split.labels[self.train_idx]
        return [self.train_idx[labels == c] for c in np.unique(labels)]

    def _features_to_device(self) -> torch.Tensor | None:
        """On a GPU, keep every feature row there when it fits, so no step copies from host memory."""
        if self.device.type != "cuda":
            return None
        feats = self.bench.features
        free, _ = torch.cuda.mem_get_info(self.device)
        if feats.nbytes > GPU_FEATURE_SHARE * free:
            return None
        return torch.from_numpy(np.ascontiguousarray(feats)).to(self.device)

    def sample_batch(self) -> np.ndarray:
        """Image indices of one training batch, drawn as the authors do (random, or class-balanced)."""
        size = self.config.batch_size
        if self._by_class is None:
            n = len(self.train_idx)
            return self.train_idx[self.rng.permutation(n)[: min(size, n)]]
        n_classes = len(self._by_class)
        per_class = max(size // n_classes, 1)
        classes = self.rng.choice(n_classes, min(n_classes, size), replace=False)
        return np.concatenate([self.rng.choice(self._by_class[c], per_class) for c in classes])

    def batch_features(self, idx: np.ndarray) -> torch.Tensor:
        if self.features_on_device is not None:
            return self.features_on_device[torch.as_tensor(idx, device=self.device)]
        return torch.from_numpy(read_rows(self.bench.features, idx)).to(self.device, non_blocking=True)

    # -- training -----------------------------------------------------------------------------
    def iterations_per_epoch(self) -> int:
        return max(len(self.train_idx) // self.config.batch_size, 1)

    def train_step(self, idx: np.ndarray) -> LossTerms:
        """Gather the batch `idx` and take one step (`msdn.step.train_step`, shared with the benchmark)."""
        features = self.batch_features(idx)
        labels = self.labels[torch.as_tensor(idx, device=self.device)]
        return train_step(self.model, self.optimizer, features, labels, self.config)

    def train_epoch(self) -> dict[str, float]:
        sums = torch.zeros(4, device=self.device)
        n = self.iterations_per_epoch()
        for _ in range(n):
            t = self.train_step(self.sample_batch())
            sums += torch.stack([t.total, t.ce, t.cal, t.dis]).detach()
        loss, ce, cal, dis = (sums / n).tolist()  # one device sync per epoch
        if not np.isfinite(loss):
            raise FloatingPointError(f"training diverged at epoch {self.epoch + 1}: loss={loss} (try a lower --lr)")
        return {"loss": loss, "loss_ce": ce, "loss_cal": cal, "loss_dis": dis}

    def evaluate(self) -> GZSLResult:
        cfg = self.config
        return evaluate_model(
            self.model, self.bench.features, self.split.labels, self.split.eval_seen_idx, self.split.eval_unseen_idx,
            alpha=cfg.alpha, gamma=cfg.gamma, gammas=self.gammas, batch_size=cfg.eval_batch_size,
            device=self.device, feature_cache=self.features_on_device,
        )

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate, and return the epoch's metrics (accuracies as fractions)."""
        start = time.perf_counter()
        losses = self.train_epoch()
        trained = time.perf_counter()
        self.last_result = self.evaluate()
        self.epoch += 1
        metrics = {
            "epoch": self.epoch, **losses, **self.last_result.summary(),
            "train_time": trained - start, "eval_time": time.perf_counter() - trained,
            "epoch_time": time.perf_counter() - start,
        }
        self.history.append(metrics)
        return metrics

    def run(self) -> Iterator[dict[str, Any]]:
        """Yield per-epoch metrics until `config.epochs` (continuing from a restored epoch)."""
        while self.epoch < self.config.epochs:
            yield self.run_epoch()

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "rng": json.dumps(self.rng.bit_generator.state),  # a string: loadable with weights_only=True
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.history = json.loads(state["history"])

    def save(self, path: str | Path, **extra: Any) -> None:
        """Write a checkpoint atomically (a crash mid-write never leaves a truncated file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({**self.state_dict(), **extra}, tmp)

    def load(self, path: str | Path) -> dict[str, Any]:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.load_state_dict(state)
        return state


def format_epoch(m: dict[str, Any], total_epochs: int) -> str:
    return (
        f"epoch {m['epoch']:3d}/{total_epochs} | loss {m['loss']:.4f} (ce {m['loss_ce']:.4f} cal {m['loss_cal']:.4f} "
        f"dis {m['loss_dis']:.4f}) | S {m['S']:.4f} U {m['U']:.4f} H {m['H']:.4f} ZSL {m['zsl_acc']:.4f} "
        f"@gamma {m['gamma']:.2f} | best gamma {m['best_gamma']:.2f}: H {m['H_best_gamma']:.4f} | "
        f"{m['epoch_time']:.1f}s"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train MSDN and evaluate it with the GZSL protocol every epoch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per epoch instead of text")
    parser.add_argument("--checkpoint", help="save a checkpoint here after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "dataset":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        parser.add_argument(flag, dest=f.name, default=None, metavar=kind.__name__.upper(),
                            type=str if kind is bool else kind, help=f"(default: per dataset, {f.default!r} here)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides: dict[str, Any] = overrides_from_yaml(args.config) if args.config else {}
    overrides.pop("dataset", None)
    for name in FIELD_NAMES - {"dataset"}:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = coerce_value(name, value)
    return default_config(args.dataset, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        resolve_device(config.device)  # a bad --device is a usage error (exit 2), found before any data work
        check_data_present(config.dataset, config.data_root)
        if args.resume and not args.checkpoint:
            raise ValueError("--resume needs --checkpoint PATH (the file to continue from)")
    except (ValueError, FileNotFoundError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say = to_stderr if args.json else print
    trainer = Trainer(config, progress=say)
    if args.resume and Path(args.checkpoint).is_file():
        trainer.load(args.checkpoint)
        say(f"resumed from {args.checkpoint} at epoch {trainer.epoch}")
    split = trainer.split
    say(
        f"MSDN on {config.dataset} ({config.protocol} protocol{': ' + split.note if split.note else ''}): "
        f"{len(split.train_idx)} training images, {int(split.seen.sum())} seen / {int((~split.seen).sum())} unseen "
        f"classes, evaluating on {len(split.eval_seen_idx)} seen + {len(split.eval_unseen_idx)} unseen images, "
        f"device {trainer.device}"
    )
    for metrics in trainer.run():
        print(json.dumps(metrics) if args.json else format_epoch(metrics, config.epochs), flush=True)
        if args.checkpoint:
            trainer.save(args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
