"""Training configuration: one dataclass, per-dataset defaults from the authors' scripts.

The defaults reproduce `shiming-chen/MSDN` (`MSDN_{cub,sun,awa2}.py`); `synthetic` uses the CUB
recipe with fewer epochs. A config can be overridden from a YAML file and from the command line
(see `msdn.train`).

Each field carries all its facts, as litgpt's argument dataclasses do: `option(default, help, group=...,
ge=/gt=/le=/lt=/choices=, study=, label=, ...)` puts a FieldFacts in the field's metadata, and every other
view is derived from it: the flags of `msdn.train` (help, group, metavar), `TrainConfig.validate` (type,
finiteness, range or choices), what a search space may search or fix (`msdn.study.search_space`) and the
labels of run names (`msdn.study.tracking.names`). Adding a field is one `option(...)` line here;
tests/test_config.py checks that every field's facts are complete.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .cli import UsageError
from .yamlfile import Checks, YamlFileError, read_yaml, shown

# The dataset registry: every --dataset choice, and the benchmarks that come from real images.
DATASETS = ("cub", "sun", "awa2", "synthetic")
REAL_DATASETS = tuple(d for d in DATASETS if d != "synthetic")  # what msdn.prepare extracts from images
PROTOCOLS = ("paper", "val")


# The --help groups of msdn.train, in the order it shows them; every field names one.
FIELD_GROUPS = ("data and split", "model and loss", "optimisation", "evaluation and calibration", "run")


@dataclass(frozen=True)
class StudyRole:
    """Whether a study's search space may search a field (`params`) or fix it (`fixed`), and why not."""

    search: bool = True
    fix: bool = True
    why: str = ""


SEARCHABLE = StudyRole()


def fixed_only(why: str) -> StudyRole:
    """A field a search space may fix but not search (`why` is shown to the user)."""
    return StudyRole(search=False, why=why)


def not_in_studies(why: str) -> StudyRole:
    """A field the command line or ASHA sets: a search space may neither search nor fix it."""
    return StudyRole(search=False, fix=False, why=why)


@dataclass(frozen=True)
class FieldFacts:
    """Everything about one TrainConfig field but its type and default, which the field itself holds.

    Derived from these: msdn.train's flags (help, group, metavar), TrainConfig.validate (ge/gt/le/lt,
    choices, noun), the search space checks (study) and run names (label, label_rank).
    """

    help: str
    group: str
    ge: float | None = None  # allowed range: value >= ge, > gt, <= le, < lt (None: no bound)
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    noun: str = ""  # what the value is, in range messages: "a weight" -> "expected a weight in [0, 1]"
    study: StudyRole = SEARCHABLE
    label: str | None = None  # its short name in a trial's run name (None: the field's own name)
    label_rank: int | None = None  # run names show searched fields by this rank (lower first; None: after)
    metavar: str | None = None  # the flag's argument in --help (None: {choices}, BOOL, INT, FLOAT or STR)

    def expected(self) -> str | None:
        """The allowed values in words ("expected >= 1", "expected a weight in [0, 1]"), or None if any value goes."""
        if self.choices is not None:
            return f"expected one of {', '.join(self.choices)}"
        low, high = self.ge if self.ge is not None else self.gt, self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            opening, closing = "[" if self.ge is not None else "(", "]" if self.le is not None else ")"
            return f"expected {self.noun + ' ' if self.noun else ''}in {opening}{low:g}, {high:g}{closing}"
        for bound, sign in ((self.ge, ">="), (self.gt, ">"), (self.le, "<="), (self.lt, "<")):
            if bound is not None:
                return f"expected {sign} {bound:g}"
        return None

    def allows(self, value: Any) -> bool:
        """Whether `value` (already of the field's type) is in the range or among the choices."""
        return ((self.choices is None or value in self.choices)
                and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def option(default: Any, help: str, *, group: str, **facts: Any) -> Any:
    """A TrainConfig field with its FieldFacts (keywords as FieldFacts' fields) as metadata."""
    if group not in FIELD_GROUPS:
        raise ValueError(f"group {group!r}: expected one of {FIELD_GROUPS}")
    return dataclasses.field(default=default, metadata={"facts": FieldFacts(help=help, group=group, **facts)})


SAME_SPLIT = "the validation split must be the same for every trial, or their scores are not comparable"
SAME_SWEEP = "the calibration sweep must be the same for every trial"


@dataclass
class TrainConfig:
    """Everything that defines one MSDN training run. A new field is one `option(...)` line here: its flag,
    its validation, what a study may do with it and its run-name label all derive from it."""

    dataset: str = option("synthetic", "benchmark, and the authors' recipe for the defaults below",
                          group="data and split", choices=DATASETS,
                          study=not_in_studies("the dataset is chosen on the command line"))
    data_root: str = option("data", "folder holding the benchmarks (synthetic: written there on first use)",
                            group="data and split", metavar="DIR",
                            study=not_in_studies("the data location is chosen on the command line"))
    protocol: str = option("paper", "paper: train on trainval, test on test_seen/test_unseen; val: train classes "
                           "vs validation classes inside the seen ones (no test image touched)",
                           group="data and split", choices=PROTOCOLS,
                           study=fixed_only("the study always tunes on the validation protocol"))
    val_fraction: float = option(0.2, "val protocol: share of each train class's images held out as val-seen",
                                 group="data and split", gt=0, lt=1, study=fixed_only(SAME_SPLIT))
    val_seed: int = option(0, "val protocol: seed of the validation classes and held-out images",
                           group="data and split", ge=0, study=fixed_only(SAME_SPLIT))
    epochs: int = option(30, "epochs of n_train / batch_size randomly drawn batches, evaluated after each",
                         group="optimisation", ge=1, study=not_in_studies("the number of epochs is asha.max_t"))
    batch_size: int = option(50, "images per training batch", group="optimisation", ge=1, label="bs", label_rank=9)
    balanced_batches: bool = option(False, "one image from each of min(seen classes, batch size) classes",
                                    group="optimisation")
    # the optimiser: RMSprop, as the authors
    lr: float = option(1e-4, "RMSprop learning rate", group="optimisation", gt=0, label="lr", label_rank=1)
    lr_v_factor: float = option(1.0, "learning rate of the attribute vectors V = lr * this", group="optimisation",
                                gt=0, label="lrV", label_rank=5)
    weight_decay: float = option(1e-4, "RMSprop weight decay", group="optimisation", ge=0, label="wd", label_rank=4)
    momentum: float = option(0.9, "RMSprop momentum", group="optimisation", ge=0, label="mom", label_rank=6)
    rms_alpha: float = option(0.99, "RMSprop smoothing constant", group="optimisation", ge=0, le=1,
                              noun="a smoothing constant")
    rms_eps: float = option(1e-8, "RMSprop epsilon", group="optimisation", gt=0)
    # the losses and the model
    lambda_cal: float = option(0.1, "weight of the self-calibration loss", group="model and loss", ge=0,
                               label="λcal", label_rank=3)
    lambda_dis: float = option(1e-3, "weight of the semantic distillation loss", group="model and loss", ge=0,
                               label="λdis", label_rank=2)
    ce_over: str = option("all", "cross-entropy over 'all' classes (the authors' GZSL setting) or 'seen' only",
                          group="model and loss", choices=("all", "seen"))
    normalize_v: bool = option(False, "L2-normalise the attribute vectors V", group="model and loss")
    margin: float = option(1.0, "seen/unseen bias on class scores during training (-m seen, +m unseen)",
                           group="model and loss")
    # evaluation
    alpha: float = option(0.9, "fused score = alpha * S_a2v + (1 - alpha) * S_v2a", group="evaluation and calibration",
                          ge=0, le=1, noun="a weight", label="α", label_rank=7)
    gamma: float = option(2.0, "calibrated stacking: offset of unseen-class scores vs seen ones",
                          group="evaluation and calibration", label="γ", label_rank=8)
    gamma_min: float = option(-2.0, "lowest gamma of the sweep that chooses grid_gamma (without a study grid)",
                              group="evaluation and calibration", study=fixed_only(SAME_SWEEP))
    gamma_max: float = option(6.0, "highest gamma of that sweep", group="evaluation and calibration",
                              study=fixed_only(SAME_SWEEP))
    gamma_steps: int = option(81, "gammas in that sweep", group="evaluation and calibration", ge=1,
                              study=fixed_only(SAME_SWEEP))
    eval_batch_size: int = option(500, "images per evaluation batch", group="evaluation and calibration", ge=1,
                                  study=fixed_only("it changes speed and memory, not results"))
    # the run
    seed: int = option(214, "seed of the model's initialisation and the batches", group="run", ge=0)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", group="run", metavar="DEVICE",
                         study=not_in_studies("the device is chosen on the command line"))
    amp: bool = option(False, "bf16 autocast for the training step (GPU or CPU)", group="run")

    def validate(self) -> "TrainConfig":
        """Raise UsageError (a ValueError) naming every field whose value is of the wrong type or out of its domain.

        Types are strict (a bool field takes only True/False, a number field no bool) and every float must be
        finite, so that no value passes here and fails later (an RMSprop with lr=inf, a NaN gamma). Ranges and
        choices are the fields' FieldFacts.
        """
        problems = {name: problem for name in FIELD_FACTS
                    if (problem := value_problem(name, getattr(self, name))) is not None}
        messages = [f"{name}={shown(getattr(self, name))} ({problem})" for name, problem in problems.items()]
        if not {"gamma_min", "gamma_max"} & set(problems) and self.gamma_max < self.gamma_min:
            messages.append(f"gamma_min={self.gamma_min} > gamma_max={self.gamma_max}")
        if messages:
            raise UsageError("invalid training configuration: " + "; ".join(messages))
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
FIELD_FACTS: dict[str, FieldFacts] = {f.name: f.metadata["facts"] for f in fields(TrainConfig)}  # in field order
BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def value_problem(name: str, value: Any) -> str | None:
    """Why `value` cannot be TrainConfig field `name` ("expected >= 1"), or None: its type, finiteness, range."""
    problem = _type_problem(value, FIELD_TYPES[name])
    if problem is None and FIELD_TYPES[name] is float and not math.isfinite(value):
        problem = "expected a finite number"
    if problem is None and not FIELD_FACTS[name].allows(value):
        problem = FIELD_FACTS[name].expected()
    return problem


class FieldChecks(Checks):
    """Shape checks (msdn.yamlfile.Checks) of a YAML file whose values are TrainConfig fields (a search space)."""

    def check_value(self, key: str, name: str, value: Any) -> None:
        """The trainer's own check of one field value at `key` (its type, finiteness and FieldFacts range)."""
        if (problem := value_problem(name, value)) is not None:
            raise self.error(f"{key} = {shown(value)} is rejected by the trainer ({name}: {problem}); "
                             f"expected a valid value of {name}")


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
        raise UsageError(f"unknown dataset {shown(dataset)}: expected one of {', '.join(DATASETS)}")
    values = {**DATASET_DEFAULTS[dataset], "dataset": dataset}
    values.update(overrides)
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise UsageError(f"unknown configuration keys {shown(unknown)}; known keys: {sorted(FIELD_NAMES)}")
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
        raise UsageError(f"{name}: expected a boolean, got {shown(value)} (true/false, yes/no, on/off or 1/0)")
    if kind is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{name}: expected a string, got {shown(value)}")
    if is_bool:
        raise UsageError(f"{name}: expected {kind.__name__}, got {shown(value)} (a boolean)")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise UsageError(f"{name}: expected an integer, got {shown(value)}")
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{name}: expected {kind.__name__}, got {shown(value)}") from None


def overrides_from_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of TrainConfig fields (msdn.yamlfile's rules); every error names the file."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"config file {path} is a folder; expected a YAML file of configuration keys")
    try:
        raw = read_yaml(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except YamlFileError as exc:
        raise UsageError(f"config file {path} {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise UsageError(f"config file {path}: expected a mapping of configuration keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - FIELD_NAMES, key=str)
    if unknown:
        raise UsageError(f"config file {path}: unknown keys {shown(unknown)}; known keys: {sorted(FIELD_NAMES)}")
    try:
        return {k: coerce_value(k, v) for k, v in raw.items()}
    except UsageError as exc:
        raise UsageError(f"config file {path}: {exc}") from None
