"""Training configuration: one dataclass, per-dataset defaults from the authors' scripts.

The defaults reproduce `shiming-chen/MSDN` (`MSDN_{cub,sun,awa2}.py`); `synthetic` uses the CUB
recipe with fewer epochs. A config can be overridden from a YAML file and from the command line
(see `msdn.train`).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from .cli import UsageError

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
        """Raise UsageError (a ValueError) naming every field whose value is of the wrong type or out of its domain.

        Types are strict (a bool field takes only True/False, a number field no bool) and every float must be
        finite, so that no value passes here and fails later (an RMSprop with lr=inf, a NaN gamma).
        """
        problems = []
        bad = set()
        for name, kind in FIELD_TYPES.items():
            value = getattr(self, name)
            problem = _type_problem(value, kind)
            if problem is None and kind is float and not math.isfinite(value):
                problem = "expected a finite number"
            if problem:
                problems.append(f"{name}={value!r} ({problem})")
                bad.add(name)

        def check(name: str, ok: Callable[[Any], bool], expected: str) -> None:
            if name not in bad and not ok(getattr(self, name)):
                problems.append(f"{name}={getattr(self, name)!r} ({expected})")

        check("dataset", lambda v: v in DATASETS, f"expected one of {', '.join(DATASETS)}")
        check("protocol", lambda v: v in PROTOCOLS, f"expected one of {', '.join(PROTOCOLS)}")
        check("ce_over", lambda v: v in ("all", "seen"), "expected 'all' or 'seen'")
        for name in ("epochs", "batch_size", "eval_batch_size", "gamma_steps"):
            check(name, lambda v: v >= 1, "expected >= 1")
        for name in ("seed", "val_seed"):
            check(name, lambda v: v >= 0, "expected >= 0")
        for name in ("lr", "lr_v_factor", "rms_eps"):
            check(name, lambda v: v > 0, "expected > 0")
        for name in ("weight_decay", "momentum", "lambda_cal", "lambda_dis"):
            check(name, lambda v: v >= 0, "expected >= 0")
        check("rms_alpha", lambda v: 0.0 <= v <= 1.0, "expected a smoothing constant in [0, 1]")
        check("alpha", lambda v: 0.0 <= v <= 1.0, "expected a weight in [0, 1]")
        check("val_fraction", lambda v: 0.0 < v < 1.0, "expected in (0, 1)")
        if not {"gamma_min", "gamma_max"} & bad and self.gamma_max < self.gamma_min:
            problems.append(f"gamma_min={self.gamma_min} > gamma_max={self.gamma_max}")
        if problems:
            raise UsageError("invalid training configuration: " + "; ".join(problems))
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
FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(TrainConfig)}  # bool, int, float or str
BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _type_problem(value: Any, kind: type) -> str | None:
    """Why `value` cannot be a value of a field of type `kind`, or None (numpy scalars count as numbers)."""
    is_bool = isinstance(value, (bool, np.bool_))
    if kind is bool:
        return None if is_bool else "expected true or false"
    if kind is int:
        return None if isinstance(value, numbers.Integral) and not is_bool else "expected an integer"
    if kind is float:
        return None if isinstance(value, numbers.Real) and not is_bool else "expected a number"
    return None if isinstance(value, str) else "expected a string"


def default_config(dataset: str, **overrides: Any) -> TrainConfig:
    """The authors' configuration for `dataset`, with `overrides` applied and validated."""
    if dataset not in DATASET_DEFAULTS:
        raise UsageError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    values = {**DATASET_DEFAULTS[dataset], "dataset": dataset}
    values.update(overrides)
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise UsageError(f"unknown configuration keys {unknown}; known keys: {sorted(FIELD_NAMES)}")
    return TrainConfig(**values).validate()


def coerce_value(name: str, value: Any) -> Any:
    """Convert `value` to the type of TrainConfig field `name` (YAML/CLI values arrive loosely typed).

    Strict where a loose reading would change meaning: a bool field takes True/False, the integers 1/0 or the
    words 1/0/true/false/yes/no/on/off (any case), nothing else (5 is an error, not True); a number field
    takes no bool; an integer field no fraction. Ranges and finiteness are TrainConfig.validate's job.
    """
    kind = FIELD_TYPES[name]
    is_bool = isinstance(value, (bool, np.bool_))
    if kind is bool:
        if is_bool:
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[value.strip().lower()]
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        raise UsageError(f"{name}: expected a boolean, got {value!r} (true/false, yes/no, on/off or 1/0)")
    if kind is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{name}: expected a string, got {value!r}")
    if is_bool:
        raise UsageError(f"{name}: expected {kind.__name__}, got {value!r} (a boolean)")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise UsageError(f"{name}: expected an integer, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{name}: expected {kind.__name__}, got {value!r}") from None


def overrides_from_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of TrainConfig fields; unknown keys are an error naming the file."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"config file {path} is a folder; expected a YAML file of configuration keys")
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not a text file; expected YAML") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise UsageError(f"config file {path}: expected a mapping of configuration keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - FIELD_NAMES, key=str)
    if unknown:
        raise UsageError(f"config file {path}: unknown keys {unknown}; known keys: {sorted(FIELD_NAMES)}")
    try:
        return {k: coerce_value(k, v) for k, v in raw.items()}
    except UsageError as exc:
        raise UsageError(f"config file {path}: {exc}") from None
