"""Training configuration: one dataclass, per-dataset defaults from the authors' scripts.

The defaults reproduce `shiming-chen/MSDN` (`MSDN_{cub,sun,awa2}.py`); `synthetic` uses the CUB
recipe with fewer epochs. A config can be overridden from a YAML file and from the command line
(see `msdn.train`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

# The dataset registry: every --dataset choice, and the benchmarks that come from real images.
DATASETS = ("cub", "sun", "awa2", "synthetic")
REAL_DATASETS = tuple(d for d in DATASETS if d != "synthetic")  # what msdn.prepare extracts from images
PROTOCOLS = ("paper", "val")


@dataclass
class TrainConfig:
    """Everything that defines one MSDN training run."""

    dataset: str = "synthetic"
    data_root: str = "data"
    protocol: str = "paper"  # "paper": trainval -> test; "val": train classes -> validation split
    val_fraction: float = 0.2  # held-out share of train-class images that form val-seen
    val_seed: int = 0
    epochs: int = 30
    batch_size: int = 50
    balanced_batches: bool = False  # one image from each of min(seen classes, batch) classes
    # optimiser (RMSprop, as the authors)
    lr: float = 1e-4
    lr_v_factor: float = 1.0  # learning rate of the attribute vectors V = lr * lr_v_factor
    weight_decay: float = 1e-4
    momentum: float = 0.9
    rms_alpha: float = 0.99
    rms_eps: float = 1e-8
    # losses
    lambda_cal: float = 0.1
    lambda_dis: float = 1e-3
    ce_over: str = "all"  # "all" classes (authors' GZSL setting) or "seen" classes only
    # model
    normalize_v: bool = False
    margin: float = 1.0  # the +1 / -1 seen/unseen bias added to class scores during training
    # evaluation
    alpha: float = 0.9  # fused score = alpha * S_a2v + (1 - alpha) * S_v2a
    gamma: float = 2.0  # calibrated stacking: offset of unseen-class scores relative to seen ones
    gamma_min: float = -2.0
    gamma_max: float = 6.0
    gamma_steps: int = 81
    eval_batch_size: int = 500
    # run
    seed: int = 214
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool = False  # bf16 autocast for the training step (GPU or CPU; ~2.3x on an AVX-512 bf16 CPU)

    def validate(self) -> "TrainConfig":
        """Raise ValueError with the offending field when a value is out of its domain."""
        problems = []
        if self.dataset not in DATASETS:
            problems.append(f"dataset={self.dataset!r} (expected one of {', '.join(DATASETS)})")
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol={self.protocol!r} (expected one of {', '.join(PROTOCOLS)})")
        if self.ce_over not in ("all", "seen"):
            problems.append(f"ce_over={self.ce_over!r} (expected 'all' or 'seen')")
        for name in ("epochs", "batch_size", "eval_batch_size", "gamma_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (expected >= 1)")
        for name in ("lr", "lr_v_factor", "rms_eps"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)} (expected > 0)")
        for name in ("weight_decay", "momentum", "lambda_cal", "lambda_dis"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} (expected >= 0)")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha={self.alpha} (expected a weight in [0, 1])")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction={self.val_fraction} (expected in (0, 1))")
        if self.gamma_max < self.gamma_min:
            problems.append(f"gamma_min={self.gamma_min} > gamma_max={self.gamma_max}")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))
        return self

    def gamma_grid(self) -> np.ndarray:
        """The calibrated-stacking offsets swept at evaluation: gamma_steps values in [gamma_min, gamma_max]."""
        return np.linspace(self.gamma_min, self.gamma_max, self.gamma_steps)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The authors' per-dataset recipes (MSDN_{cub,sun,awa2}.py and helper_MSDN_*.py).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cub": dict(lr=1e-4, weight_decay=1e-4, momentum=0.9, lambda_cal=0.1, lambda_dis=1e-3,
                alpha=0.9, epochs=30, seed=214, balanced_batches=False, normalize_v=False),
    "sun": dict(lr=1e-4, weight_decay=1e-4, momentum=0.9, lambda_cal=1e-4, lambda_dis=1e-2,
                alpha=0.7, epochs=70, seed=2339, balanced_batches=True, normalize_v=False),
    "awa2": dict(lr=1e-4, weight_decay=1e-4, momentum=0.0, lambda_cal=0.12, lambda_dis=1e-7,
                 alpha=1.0, epochs=50, seed=87778, balanced_batches=True, normalize_v=True),
    # The CUB recipe with a 5x learning rate (the small benchmark has ~40 iterations per epoch,
    # CUB ~140) and fewer epochs.
    "synthetic": dict(lr=5e-4, weight_decay=1e-4, momentum=0.9, lambda_cal=0.1, lambda_dis=1e-3,
                      alpha=0.9, epochs=10, seed=214, balanced_batches=False, normalize_v=False),
}

FIELD_NAMES = frozenset(f.name for f in fields(TrainConfig))


def default_config(dataset: str, **overrides: Any) -> TrainConfig:
    """The authors' configuration for `dataset`, with `overrides` applied and validated."""
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    values = {**DATASET_DEFAULTS[dataset], "dataset": dataset}
    values.update(overrides)
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise ValueError(f"unknown configuration keys {unknown}; known keys: {sorted(FIELD_NAMES)}")
    return TrainConfig(**values).validate()


def coerce_value(name: str, value: Any) -> Any:
    """Convert `value` to the type of TrainConfig field `name` (YAML/CLI values arrive loosely typed)."""
    kind = type(getattr(TrainConfig(), name))
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name}: expected a boolean, got {value!r}")
        return bool(value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}") from exc


def overrides_from_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of TrainConfig fields; unknown keys are an error naming the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"config file {path}: expected a mapping of configuration keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - FIELD_NAMES)
    if unknown:
        raise ValueError(f"config file {path}: unknown keys {unknown}; known keys: {sorted(FIELD_NAMES)}")
    try:
        return {k: coerce_value(k, v) for k, v in raw.items()}
    except ValueError as exc:
        raise ValueError(f"config file {path}: {exc}") from None
