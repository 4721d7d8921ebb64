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
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .checkpoint import (check_resume, check_resume_config, checkpoint_progress, make_checkpoint, read_checkpoint,
                         write_checkpoint)
from .cli import UsageError, cli_entry, command_parser, device_flag
from .config import (DATASET_DEFAULTS, DATASETS, FIELD_FACTS, FIELD_GROUPS, FIELD_NAMES, FIELD_TYPES, TrainConfig,
                     coerce_value, default_config, overrides_from_yaml)
from .data import check_data_present, load_benchmark, make_split, read_rows
from .device import (PinnedBatches, copy_to_device, feature_budget_bytes, keep_features_on_device, resolve_device,
                     step_reserve_bytes)
from .evaluate import evaluate_model
from .losses import LossTerms
from .metrics import EvalGrid, GZSLResult
from .model import MSDN
from .progress import Progress, to_stderr
from .step import build_optimizer, train_step


class Trainer:
    """One MSDN training run: model, optimiser, batch sampler, per-epoch evaluation, checkpoint state.

    On a GPU, `gpu_share` is the run's fraction of the device (a Ray trial's GPU share; None: the whole
    device is ours) and bounds the memory the resident feature array may take (`msdn.device`).
    `resident_features`, the array already on the device (kept by a reused worker), skips the copy.
    `eval_grid` (alpha x gamma; None: the configured alpha x the gamma sweep) is swept after every evaluation,
    from the same forward pass (`msdn.metrics.gzsl_evaluate`).
    """

    def __init__(self, config: TrainConfig, bench=None, split=None, *, progress: Progress = print,
                 gpu_share: float | None = None, resident_features: torch.Tensor | None = None,
                 eval_grid: EvalGrid | None = None):
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
        self.eval_grid = eval_grid
        self._by_class = self._train_images_by_class() if config.balanced_batches else None
        self.gpu_share = gpu_share
        if resident_features is not None and tuple(resident_features.shape) != self.bench.features.shape:
            raise ValueError(f"resident_features of shape {tuple(resident_features.shape)} for a benchmark of "
                             f"shape {self.bench.features.shape}")
        self.features_on_device = resident_features if resident_features is not None else self._features_to_device()
        self._pinned = None  # host batches through pinned memory, when the features stay on the host of a GPU
        if self.device.type == "cuda" and self.features_on_device is None:
            self._pinned = PinnedBatches(self.bench.features.shape[1:], config.batch_size, torch.float16, self.device)

    # -- data ---------------------------------------------------------------------------------
    def _train_images_by_class(self) -> list[np.ndarray]:
        labels = self.split.labels[self.train_idx]
        return [self.train_idx[labels == c] for c in np.unique(labels)]

    def _features_to_device(self) -> torch.Tensor | None:
        """On a GPU, keep every feature row there when it fits this run's budget, so no step copies from host memory.

        The budget is the run's share of the device minus what the model and its largest batch need
        (`msdn.device.feature_budget_bytes`), so trials packed on one GPU never over-commit it.
        """
        if self.device.type != "cuda":
            return None
        feats = self.bench.features
        free, total = torch.cuda.mem_get_info(self.device)
        n_regions, n_channels = feats.shape[1:]
        reserve = step_reserve_bytes(sum(p.numel() for p in self.model.parameters()), self.config.batch_size,
                                     self.config.eval_batch_size, n_regions, n_channels, self.split.att.shape[1])
        if not keep_features_on_device(feats.nbytes, feature_budget_bytes(self.gpu_share, total, free, reserve)):
            return None
        return copy_to_device(feats, self.device)

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
        rows = read_rows(self.bench.features, idx)
        if self._pinned is not None:  # a GPU without the resident array: pinned memory, non-blocking copy
            return self._pinned.to_device(rows)
        return torch.from_numpy(rows).to(self.device, non_blocking=True)

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
            alpha=cfg.alpha, gamma=cfg.gamma, gammas=self.gammas, grid=self.eval_grid, batch_size=cfg.eval_batch_size,
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

    # -- checkpoints (the format, the writer, the reader and the checks: msdn.checkpoint) ---------------
    def state_dict(self, **extras: Any) -> dict[str, Any]:
        """The run as a checkpoint dict (`msdn.checkpoint.make_checkpoint`); `extras` say who wrote it."""
        return make_checkpoint(self.config, self.model.state_dict(), self.optimizer.state_dict(), self.epoch,
                               self.rng.bit_generator.state, self.history, extras)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.rng.bit_generator.state, self.history = checkpoint_progress(state)

    def save(self, path: str | Path, **extras: Any) -> None:
        """Write a checkpoint atomically (a crash mid-write never leaves a truncated file)."""
        write_checkpoint(path, self.state_dict(**extras))

    def load(self, path: str | Path) -> dict[str, Any]:
        """Continue from the checkpoint file `path`, after checking that it fits this run (CheckpointError if not)."""
        state = read_checkpoint(path)
        check_resume(state, self.config, self.model, self.optimizer, path)
        self.load_state_dict(state)
        return state


def format_epoch(m: dict[str, Any], total_epochs: int) -> str:
    return (
        f"epoch {m['epoch']:3d}/{total_epochs} | loss {m['loss']:.4f} (ce {m['loss_ce']:.4f} cal {m['loss_cal']:.4f} "
        f"dis {m['loss_dis']:.4f}) | S {m['S']:.4f} U {m['U']:.4f} H {m['H']:.4f} ZSL {m['zsl_acc']:.4f} "
        f"@gamma {m['gamma']:.2f} | AUSUC {m['AUSUC']:.4f} | grid alpha {m['grid_alpha']:.2f} "
        f"gamma {m['grid_gamma']:.2f}: H {m['H_grid']:.4f} | {m['epoch_time']:.1f}s"
    )


def _default_words(name: str) -> str:
    """A field's default for --help: one value, or the authors' per-dataset values where they differ."""
    def show(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    fallback = getattr(TrainConfig, name)
    values = {ds: recipe.get(name, fallback) for ds, recipe in DATASET_DEFAULTS.items()}
    counts = Counter(values.values())
    common, n = counts.most_common(1)[0]
    if n == len(values):
        return f"default: {show(common)}"
    if n > 1 and list(counts.values()).count(n) == 1:  # one value most datasets share: name the exceptions
        others = ", ".join(f"{ds} {show(v)}" for ds, v in values.items() if v != common)
        return f"default: {show(common)} except {others}"
    return "default: " + ", ".join(f"{ds} {show(v)}" for ds, v in values.items())


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "python -m msdn.train",
        "Train MSDN and evaluate it with the GZSL protocol every epoch.\n\n"
        "Every field of the configuration is a flag. Its value comes from the authors' recipe for "
        "--dataset (msdn/config.py), then the --config file, then the flag.",
        "python -m msdn.train --dataset synthetic --epochs 2   # the demo: data generated on first use",
        "python -m msdn.train --dataset synthetic --checkpoint run.pt --resume   # rerun to continue",
        "python -m msdn.train --dataset cub --data-root /data/zsl --lambda-dis 0.01 --json",
    )
    groups = {title: parser.add_argument_group(title) for title in FIELD_GROUPS}
    for name, facts in FIELD_FACTS.items():  # every field is a flag, from its FieldFacts (msdn/config.py)
        if name == "dataset":  # the one required flag: its recipe gives the other flags' defaults
            groups[facts.group].add_argument("--dataset", required=True, choices=DATASETS, help=facts.help)
            continue
        kind = FIELD_TYPES[name]
        metavar = facts.metavar or ("{" + ",".join(facts.choices) + "}" if facts.choices else kind.__name__.upper())
        words = "true/false; " if kind is bool else ""
        groups[facts.group].add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, metavar=metavar,
            type=str if kind is bool else kind, help=f"{facts.help} ({words}{_default_words(name)})")
    run = groups["run"]
    run.add_argument("--config", metavar="FILE", help="YAML file of configuration fields (flags override it)")
    run.add_argument("--checkpoint", metavar="FILE", help="save a checkpoint here after every epoch")
    run.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    parser.add_argument_group("output").add_argument(
        "--json", action="store_true", help="print one JSON object per epoch instead of text")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: the dataset's recipe, then the --config file, then the flags; validated."""
    overrides: dict[str, Any] = overrides_from_yaml(args.config) if args.config else {}
    overrides.pop("dataset", None)
    for name in FIELD_NAMES - {"dataset"}:
        value = getattr(args, name, None)
        if value is not None:
            try:
                overrides[name] = coerce_value(name, value)
            except UsageError as exc:  # "amp: expected ..." -> "--amp: expected ...", the name the user typed
                raise UsageError(f"--{name.replace('_', '-')}{str(exc)[len(name):]}") from None
    return default_config(args.dataset, **overrides)


def checkpoint_target(args: argparse.Namespace) -> Path | None:
    """The --checkpoint path after the checks that protect files: never overwrite one without --resume."""
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint PATH (the file to continue from)")
    if not args.checkpoint:
        return None
    path = Path(args.checkpoint)
    if path.is_dir():
        raise UsageError(f"--checkpoint {path} is a folder; expected the path of a checkpoint file")
    if path.exists() and not args.resume:
        raise UsageError(f"--checkpoint {path} exists; pass --resume to continue it, or choose another path "
                         "(the file was left untouched)")
    parent = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if parent != path.absolute() and not parent.is_dir():
        raise UsageError(f"--checkpoint {path}: {parent} is a file; expected a folder to write the checkpoint in")
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--checkpoint {path}: cannot write in {parent} (permission denied)")
    return path


@cli_entry(expected=(FloatingPointError,))  # a diverged run: its message says which epoch and what to try
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m msdn.train`: flags, data and checkpoint are all checked before the first step (msdn.cli policy)."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    device_flag(config.device)  # an unknown or unusable --device stops here, before any data work
    check_data_present(config.dataset, config.data_root)
    checkpoint = checkpoint_target(args)
    resume = checkpoint is not None and args.resume and checkpoint.is_file()
    if resume:  # the cheap checks (readable, a run of this dataset and split) before the data is loaded
        check_resume_config(read_checkpoint(checkpoint), config, checkpoint)
    say = to_stderr if args.json else print
    trainer = Trainer(config, progress=say)
    if resume:
        trainer.load(checkpoint)
        say(f"resumed from {checkpoint} at epoch {trainer.epoch}")
    split = trainer.split
    say(
        f"MSDN on {config.dataset} ({config.protocol} protocol{': ' + split.note if split.note else ''}): "
        f"{len(split.train_idx)} training images, {int(split.seen.sum())} seen / {int((~split.seen).sum())} unseen "
        f"classes, evaluating on {len(split.eval_seen_idx)} seen + {len(split.eval_unseen_idx)} unseen images, "
        f"device {trainer.device}"
    )
    for metrics in trainer.run():
        print(json.dumps(metrics) if args.json else format_epoch(metrics, config.epochs), flush=True)
        if checkpoint is not None:
            trainer.save(checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
