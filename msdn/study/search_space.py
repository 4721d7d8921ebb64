"""Search spaces for the hyperparameter study: the YAML format, its parser and its validation.

A search space file (``search_spaces/{cub,sun,awa2,synthetic}.yaml``, format in docs/search_spaces.md)
says which metric to optimise, how ASHA stops trials, how the Optuna searcher starts, which
TrainConfig fields are fixed, which are searched over which distribution, and over which grid the
evaluation-time settings alpha and gamma are chosen after every epoch (`eval_grid`). Every mistake a
person can make in it is reported here, naming the file and the dotted key, before any trial starts:

    from msdn.study.search_space import load_search_space
    space = load_search_space("search_spaces/cub.yaml", dataset="cub")
    space.tune_param_space()      # {"lr": tune.loguniform(1e-5, 1e-3), ...}
    space.initial_points("cub")   # [{"lr": 1e-4, ...}]  the authors' configuration first
    space.eval_grid()             # EvalGrid(alphas=(0.0, 0.05, ...), gammas=(-2.0, -1.9, ...))

Only this module's ``tune_param_space`` imports Ray, so the parser stays cheap to import.

It is one module on purpose, although longer than most: its one job is the format, and the format's
sections (asha, searcher, fixed, params, points, eval_grid) share one set of checks and error helpers; read top
to bottom, it is the format's reference. Split it when a second format or a second consumer appears.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from msdn.config import DATASETS, FIELD_NAMES, TrainConfig, coerce_value, default_config
from msdn.metrics import SCORE_KEYS, EvalGrid

# The losses msdn.train.Trainer reports after every epoch (its loss terms).
LOSS_METRICS = ("loss", "loss_ce", "loss_cal", "loss_dis")
# Metrics each trial reports after every epoch, with the direction in which they improve: the
# GZSL scores (H first, the usual choice, as error messages list them) and the losses.
METRICS: dict[str, str] = {
    **{name: "max" for name in ("H",) + SCORE_KEYS},
    **{name: "min" for name in LOSS_METRICS},
}
DISTRIBUTIONS = ("loguniform", "uniform", "int", "logint", "choice")
LOG_DISTRIBUTIONS = ("loguniform", "logint")
INT_DISTRIBUTIONS = ("int", "logint")

# TrainConfig fields that a study must not search, with the reason given to the user.
NOT_SEARCHABLE: dict[str, str] = {
    "dataset": "the dataset is chosen on the command line",
    "data_root": "the data location is chosen on the command line",
    "protocol": "the study always tunes on the validation protocol",
    "device": "the device is chosen on the command line",
    "val_seed": "the validation split must be the same for every trial, or their scores are not comparable",
    "val_fraction": "the validation split must be the same for every trial, or their scores are not comparable",
    "epochs": "the number of epochs is asha.max_t",
    "eval_batch_size": "it changes speed and memory, not results",
    "gamma_min": "the calibration sweep must be the same for every trial",
    "gamma_max": "the calibration sweep must be the same for every trial",
    "gamma_steps": "the calibration sweep must be the same for every trial",
}
# TrainConfig fields that a study file must not fix either (set by the command line or by ASHA).
NOT_FIXABLE: dict[str, str] = {
    "dataset": NOT_SEARCHABLE["dataset"],
    "data_root": NOT_SEARCHABLE["data_root"],
    "device": NOT_SEARCHABLE["device"],
    "epochs": NOT_SEARCHABLE["epochs"],
}

REQUIRED_KEYS = ("metric", "mode", "asha", "params")
OPTIONAL_KEYS = ("dataset", "searcher", "fixed", "eval_grid")
ASHA_KEYS = ("max_t", "grace_period", "reduction_factor")
SEARCHER_KEYS = ("seed", "start_from_defaults", "points_to_evaluate")

# The evaluation-time settings: they change no trained weight, so every value of a grid is scored from
# one evaluation of each epoch (msdn.metrics.grid_evaluate) instead of costing a training run each.
EVAL_SETTINGS = ("alpha", "gamma")
GRID_AXIS_KEYS = ("low", "high", "step")
# The grid when a file has no eval_grid section: alpha over [0, 1], gamma over the calibration sweep.
DEFAULT_EVAL_GRID = {"alpha": {"low": 0.0, "high": 1.0, "step": 0.05}, "gamma": {"low": -2.0, "high": 6.0, "step": 0.1}}
# Points per axis at most: each alpha costs a calibration curve per evaluation, each gamma a column of one.
MAX_GRID_POINTS = 401


class SearchSpaceError(ValueError):
    """A search space file is malformed; the message names the file, the key and what was expected."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched TrainConfig field: a distribution with bounds (or the values of a choice)."""

    name: str
    distribution: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple | None = None

    def describe(self) -> str:
        """The range in words, for error messages: `loguniform in [1e-05, 0.001]`."""
        if self.distribution == "choice":
            return f"choice of {list(self.values)}"
        return f"{self.distribution} in [{self.low}, {self.high}]"

    def admit(self, value: Any) -> Any:
        """`value` converted to this parameter's type; ValueError (a phrase) when it is outside the range."""
        if self.distribution == "choice":
            try:
                value = coerce_value(self.name, value)
            except ValueError:
                raise ValueError(f"is not one of {list(self.values)}") from None
            if value not in self.values:
                raise ValueError(f"is not one of {list(self.values)}")
            return value
        number = _as_number(value)
        if number is None:
            raise ValueError("is not a number")
        if self.distribution in INT_DISTRIBUTIONS:
            if not float(number).is_integer():
                raise ValueError(f"is not an integer ({self.distribution} distribution)")
            number = int(number)
        else:
            number = float(number)
        if not self.low <= number <= self.high:
            raise ValueError(f"is outside [{self.low}, {self.high}]")
        return number

    def to_tune(self) -> Any:
        """The matching ray.tune domain (integer upper bounds are inclusive here, exclusive in Tune)."""
        from ray import tune

        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        if self.distribution == "int":
            return tune.randint(self.low, self.high + 1)
        if self.distribution == "logint":
            return tune.lograndint(self.low, self.high + 1)
        return tune.choice(list(self.values))


@dataclass(frozen=True)
class AshaSettings:
    """ASHA early stopping, in epochs (one reported result per epoch)."""

    max_t: int
    grace_period: int
    reduction_factor: float


@dataclass(frozen=True)
class GridAxis:
    """One evaluation-time setting swept over low, low + step, ..., high after every epoch."""

    name: str
    low: float
    high: float
    step: float

    def values(self) -> tuple[float, ...]:
        # Rounded, so that 0.05 * 14 is 0.7, the value a file or a recipe writes.
        return tuple(round(self.low + k * self.step, 10) for k in range(round((self.high - self.low) / self.step) + 1))

    def describe(self) -> str:
        return f"{self.name} {self.low:g} to {self.high:g} step {self.step:g} ({len(self.values())} values)"


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space file."""

    path: Path
    dataset: str | None
    metric: str
    mode: str
    asha: AshaSettings
    sampler_seed: int
    start_from_defaults: bool  # evaluate the authors' published configuration first
    points_to_evaluate: tuple[dict, ...]  # extra explicit starting points, values already converted
    fixed: dict[str, Any]  # TrainConfig fields fixed for every trial
    params: tuple[ParamSpec, ...]
    grid: tuple[GridAxis, ...] = ()  # the settings chosen on the grid after every epoch (none: as configured)

    def eval_grid(self) -> EvalGrid:
        """The grid every trial sweeps; a setting without an axis (searched under params) keeps the trial's value."""
        axes = {axis.name: axis.values() for axis in self.grid}
        return EvalGrid(alphas=axes.get("alpha"), gammas=axes.get("gamma"))

    def describe_grid(self) -> str:
        """The grid in words, for the study's header."""
        if not self.grid:
            return "none (alpha and gamma as configured or searched)"
        return ", ".join(axis.describe() for axis in self.grid)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def initial_points(self, dataset: str) -> list[dict]:
        """The points the searcher evaluates first: the authors' values of the searched parameters
        for `dataset` (with `fixed` applied) if `start_from_defaults`, then `points_to_evaluate`.

        With `start_from_defaults`, the authors' alpha and gamma must also be values of the grid, so the
        published configuration is among what the study evaluates."""
        _check_dataset(self.path, self.dataset, dataset)
        points = []
        if self.start_from_defaults:
            try:
                config = default_config(dataset, **self.fixed)
            except ValueError as exc:
                raise _error(self.path, f"fixed = {self.fixed!r} does not combine with the authors' "
                                        f"{dataset} configuration ({exc}); expected valid values") from None
            for axis in self.grid:
                _check_grid_covers(self.path, axis, getattr(config, axis.name), dataset)
            authors = {}
            for spec in self.params:
                value = getattr(config, spec.name)
                try:
                    authors[spec.name] = spec.admit(value)
                except ValueError as exc:
                    raise _error(
                        self.path,
                        f"searcher.start_from_defaults is true but the authors' {dataset} value "
                        f"{spec.name} = {value!r} {exc} (params.{spec.name}); "
                        f"expected a range that contains it: widen params.{spec.name} to include "
                        f"{value!r}, or set searcher.start_from_defaults: false",
                    ) from None
            points.append(authors)
        points.extend(dict(point) for point in self.points_to_evaluate)
        return points

    def tune_param_space(self) -> dict[str, Any]:
        """The searched parameters as ray.tune domains (fixed fields are not included)."""
        return {spec.name: spec.to_tune() for spec in self.params}


def load_search_space(path: str | Path, dataset: str | None = None) -> SearchSpace:
    """Read and validate a search space file; SearchSpaceError names the first problem found.

    `dataset` is the dataset the study will run on (the file's optional `dataset` key must agree);
    when known, the authors' values are checked against the ranges here, not at the first trial.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise _error(path, "the file does not exist; expected a YAML search space file") from None
    except yaml.YAMLError as exc:
        raise _error(path, f"the file is not valid YAML ({exc}); expected a YAML mapping") from None
    if not isinstance(raw, Mapping):
        raise _error(path, f"found {_type_name(raw)} at the top level; expected a mapping with the keys "
                           f"{', '.join(REQUIRED_KEYS)} (and optionally {', '.join(OPTIONAL_KEYS)})")
    _check_keys(path, "", raw, REQUIRED_KEYS, OPTIONAL_KEYS)

    file_dataset = raw.get("dataset")
    if file_dataset is not None and (not isinstance(file_dataset, str) or file_dataset not in DATASETS):
        raise _error(path, f"dataset = {file_dataset!r} is not a known dataset; expected one of {', '.join(DATASETS)}")
    _check_dataset(path, file_dataset, dataset)

    metric = raw["metric"]
    if not isinstance(metric, str) or metric not in METRICS:
        raise _error(path, f"metric = {metric!r} is not a metric the trials report; expected one of "
                           f"{', '.join(METRICS)}{_suggest(metric, METRICS)}")
    mode = raw["mode"]
    if mode not in ("max", "min"):
        raise _error(path, f"mode = {mode!r}; expected max or min")
    if mode != METRICS[metric]:
        raise _error(path, f"mode = {mode!r} but metric {metric} improves when it goes "
                           f"{'up' if METRICS[metric] == 'max' else 'down'}; expected mode: {METRICS[metric]}")

    asha = _parse_asha(path, raw["asha"])
    seed, start_from_defaults, raw_points = _parse_searcher(path, raw.get("searcher"))
    fixed = _parse_fixed(path, raw.get("fixed"))
    params = _parse_params(path, raw["params"], fixed)
    points = tuple(_parse_point(path, f"searcher.points_to_evaluate[{i}]", point, params)
                   for i, point in enumerate(raw_points))
    grid = _parse_eval_grid(path, raw.get("eval_grid", _DEFAULT), {spec.name for spec in params})

    space = SearchSpace(path=path, dataset=file_dataset, metric=metric, mode=mode, asha=asha,
                        sampler_seed=seed, start_from_defaults=start_from_defaults,
                        points_to_evaluate=points, fixed=fixed, params=params, grid=grid)
    if dataset or file_dataset:
        space.initial_points(dataset or file_dataset)  # fails now if the authors' values are out of range
    return space


# ---------------------------------------------------------------------------------------------------
# Sections


def _parse_asha(path: Path, raw: Any) -> AshaSettings:
    """The `asha` mapping: max_t >= 1, 1 <= grace_period <= max_t, reduction_factor > 1."""
    if not isinstance(raw, Mapping):
        raise _error(path, f"asha = {raw!r}; expected a mapping with the keys {', '.join(ASHA_KEYS)}")
    _check_keys(path, "asha.", raw, ASHA_KEYS, ())
    max_t = _integer(path, "asha.max_t", raw["max_t"])
    if max_t < 1:
        raise _error(path, f"asha.max_t = {max_t}; expected at least 1 epoch")
    grace = _integer(path, "asha.grace_period", raw["grace_period"])
    if not 1 <= grace <= max_t:
        raise _error(path, f"asha.grace_period = {grace} with asha.max_t = {max_t}; "
                           f"expected 1 <= grace_period <= max_t")
    factor = _as_number(raw["reduction_factor"])
    if factor is None:
        raise _error(path, f"asha.reduction_factor = {raw['reduction_factor']!r} is not a number; "
                           f"expected a number greater than 1")
    if not factor > 1:
        raise _error(path, f"asha.reduction_factor = {factor}; expected a number greater than 1 "
                           f"(the share of trials kept at each rung is 1 / reduction_factor)")
    return AshaSettings(max_t=max_t, grace_period=grace, reduction_factor=float(factor))


def _parse_searcher(path: Path, raw: Any) -> tuple[int, bool, list]:
    """The optional `searcher` mapping: seed (0), start_from_defaults (true), points_to_evaluate ([])."""
    if raw is None:
        return 0, True, []
    if not isinstance(raw, Mapping):
        raise _error(path, f"searcher = {raw!r}; expected a mapping with the keys {', '.join(SEARCHER_KEYS)}")
    _check_keys(path, "searcher.", raw, (), SEARCHER_KEYS)
    seed = _integer(path, "searcher.seed", raw.get("seed", 0))
    start = raw.get("start_from_defaults", True)
    if not isinstance(start, bool):
        raise _error(path, f"searcher.start_from_defaults = {start!r}; expected true or false")
    points = raw.get("points_to_evaluate")
    if points is None:
        points = []
    if not isinstance(points, list):
        raise _error(path, f"searcher.points_to_evaluate = {points!r}; expected a list of mappings "
                           f"from parameter names to values")
    return seed, start, points


def _parse_fixed(path: Path, raw: Any) -> dict[str, Any]:
    """The optional `fixed` mapping of TrainConfig fields, converted to their types and validated."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _error(path, f"fixed = {raw!r}; expected a mapping from training configuration fields to values")
    fixed = {}
    for name, value in raw.items():
        key = f"fixed.{name}"
        _check_field(path, key, name)
        if name in NOT_FIXABLE:
            raise _error(path, f"{key} cannot be set in a search space: {NOT_FIXABLE[name]}; "
                               f"expected it removed from fixed")
        try:
            fixed[name] = coerce_value(name, value)
        except ValueError as exc:
            raise _error(path, f"{key} = {value!r} has the wrong type ({exc})") from None
    try:
        TrainConfig().replace(**fixed).validate()
    except ValueError as exc:
        raise _error(path, f"fixed = {dict(raw)!r} is rejected by the trainer ({exc}); "
                           f"expected valid values of those fields") from None
    return fixed


def _parse_params(path: Path, raw: Any, fixed: Mapping[str, Any]) -> tuple[ParamSpec, ...]:
    """The `params` mapping: at least one searched field, each with a valid distribution."""
    if not isinstance(raw, Mapping) or not raw:
        raise _error(path, f"params = {raw!r}; expected a non-empty mapping from training configuration "
                           f"fields to distributions, e.g. lr: {{distribution: loguniform, low: 1.0e-5, high: 1.0e-3}}")
    return tuple(_parse_param(path, name, spec, fixed) for name, spec in raw.items())


def _parse_param(path: Path, name: Any, raw: Any, fixed: Mapping[str, Any]) -> ParamSpec:
    """One entry of `params`; see docs/search_spaces.md for the rules."""
    key = f"params.{name}"
    _check_field(path, key, name)
    if name in NOT_SEARCHABLE:
        raise _error(path, f"{key} cannot be searched: {NOT_SEARCHABLE[name]}; expected it removed from params")
    if name in fixed:
        raise _error(path, f"{key} is searched but also fixed (fixed.{name} = {fixed[name]!r}); "
                           f"expected a field to be either fixed or searched, not both")
    if not isinstance(raw, Mapping):
        raise _error(path, f"{key} = {raw!r}; expected a mapping such as "
                           f"{{distribution: loguniform, low: 1.0e-5, high: 1.0e-3}}")
    _check_keys(path, f"{key}.", raw, ("distribution",), ("low", "high", "values"))
    distribution = raw["distribution"]
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise _error(path, f"{key}.distribution = {distribution!r} is not a known distribution; expected one of "
                           f"{', '.join(DISTRIBUTIONS)}{_suggest(distribution, DISTRIBUTIONS)}")
    kind = type(getattr(TrainConfig(), name))
    if kind in (bool, str) and distribution != "choice":
        raise _error(path, f"{key}.distribution = {distribution} but {name} is a {kind.__name__} field; "
                           f"expected distribution: choice")
    if kind is int and distribution not in INT_DISTRIBUTIONS + ("choice",):
        raise _error(path, f"{key}.distribution = {distribution} would give {name} fractional values but it "
                           f"is an integer field; expected int, logint or choice")

    if distribution == "choice":
        return _parse_choice(path, key, name, raw)

    if "values" in raw:
        raise _error(path, f"{key}.values is given for a {distribution} distribution; "
                           f"expected low and high only (values belongs to distribution: choice)")
    bounds = {}
    for side in ("low", "high"):
        if side not in raw:
            raise _error(path, f"{key}.{side} is missing; expected a number for a {distribution} distribution")
        value = _as_number(raw[side])
        if value is None:
            raise _error(path, f"{key}.{side} = {raw[side]!r} is not a number; expected a finite number "
                               f"(write 1.0e-5, not 1e-5 without the dot, if YAML read it as text)")
        if distribution in INT_DISTRIBUTIONS:
            if not float(value).is_integer():
                raise _error(path, f"{key}.{side} = {value} is not an integer; expected an integer bound "
                                   f"for a {distribution} distribution")
            value = int(value)
        else:
            value = float(value)
        bounds[side] = value
    low, high = bounds["low"], bounds["high"]
    if low > high:
        raise _error(path, f"{key}.low = {low} is greater than {key}.high = {high}; expected low <= high")
    if low == high and distribution not in INT_DISTRIBUTIONS:
        raise _error(path, f"{key}.low = {key}.high = {low}; expected low < high for a {distribution} "
                           f"distribution (move {name} to fixed to hold it constant)")
    if distribution in LOG_DISTRIBUTIONS and low <= 0:
        raise _error(path, f"{key}.low = {low} for a {distribution} distribution; expected low > 0 "
                           f"(a log scale cannot reach zero or below; use uniform or int instead)")
    for side, value in bounds.items():
        _check_trainer_accepts(path, f"{key}.{side}", name, value)
    return ParamSpec(name=name, distribution=distribution, low=low, high=high)


def _parse_choice(path: Path, key: str, name: str, raw: Mapping) -> ParamSpec:
    """A `choice` parameter: a non-empty list of distinct values of the field's type."""
    given = [side for side in ("low", "high") if side in raw]
    if given:
        raise _error(path, f"{key}.{given[0]} is given for a choice distribution; expected values only "
                           f"(low and high belong to uniform, loguniform, int and logint)")
    values = raw.get("values")
    if not isinstance(values, list) or not values:
        raise _error(path, f"{key}.values = {values!r}; expected a non-empty list of values for a choice "
                           f"distribution, e.g. values: [0.0, 0.9]")
    coerced = []
    for i, value in enumerate(values):
        try:
            value = coerce_value(name, value)
        except ValueError as exc:
            raise _error(path, f"{key}.values[{i}] = {value!r} has the wrong type ({exc})") from None
        if value in coerced:
            raise _error(path, f"{key}.values[{i}] = {value!r} is listed twice; expected distinct values")
        _check_trainer_accepts(path, f"{key}.values[{i}]", name, value)
        coerced.append(value)
    return ParamSpec(name=name, distribution="choice", values=tuple(coerced))


_DEFAULT = object()  # eval_grid absent from the file (an explicit `eval_grid: {}` grids nothing)


def _parse_eval_grid(path: Path, raw: Any, searched: set[str]) -> tuple[GridAxis, ...]:
    """The optional `eval_grid` mapping: alpha and/or gamma, each {low, high, step}.

    Absent: DEFAULT_EVAL_GRID for each setting not searched under params. A setting both searched and
    gridded is an error: searched, it is fixed per trial (the old way); gridded, it is chosen per epoch.
    """
    if raw is _DEFAULT:
        return tuple(_parse_axis(path, name, DEFAULT_EVAL_GRID[name]) for name in EVAL_SETTINGS if name not in searched)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _error(path, f"eval_grid = {raw!r}; expected a mapping with the keys {', '.join(EVAL_SETTINGS)}, e.g. "
                           f"alpha: {{low: 0.0, high: 1.0, step: 0.05}}")
    _check_keys(path, "eval_grid.", raw, (), EVAL_SETTINGS)
    for name in raw:
        if name in searched:
            raise _error(path, f"eval_grid.{name} is given but {name} is also searched under params.{name}; expected "
                               f"one of the two: a grid chooses {name} after every epoch at no training cost, "
                               f"params searches it per trial (the old way)")
    return tuple(_parse_axis(path, name, raw[name], f"eval_grid.{name}") for name in EVAL_SETTINGS if name in raw)


def _parse_axis(path: Path, name: str, raw: Any, key: str | None = None) -> GridAxis:
    """One axis {low, high, step}: low <= high, step > 0, (high - low) / step whole, values the trainer accepts."""
    key = key or f"eval_grid.{name} (default {DEFAULT_EVAL_GRID[name]})"
    if not isinstance(raw, Mapping):
        raise _error(path, f"{key} = {raw!r}; expected a mapping such as {{low: 0.0, high: 1.0, step: 0.05}}")
    _check_keys(path, f"{key}.", raw, GRID_AXIS_KEYS, ())
    numbers = {}
    for side in GRID_AXIS_KEYS:
        value = _as_number(raw[side])
        if value is None:
            raise _error(path, f"{key}.{side} = {raw[side]!r} is not a number; expected a finite number")
        numbers[side] = float(value)
    low, high, step = numbers["low"], numbers["high"], numbers["step"]
    if low > high:
        raise _error(path, f"{key}.low = {low:g} is greater than {key}.high = {high:g}; expected low <= high")
    if not step > 0:
        raise _error(path, f"{key}.step = {step:g}; expected a step > 0")
    intervals = (high - low) / step
    if abs(intervals - round(intervals)) > 1e-6:
        raise _error(path, f"{key}: (high - low) / step = ({high:g} - {low:g}) / {step:g} = {intervals:.4g} is not a "
                           f"whole number; expected a step that divides the range, so that high is a grid value")
    if round(intervals) + 1 > MAX_GRID_POINTS:
        raise _error(path, f"{key} has {round(intervals) + 1} values; expected at most {MAX_GRID_POINTS} (every value "
                           f"is scored after every epoch): use a larger step or a narrower range")
    for side in ("low", "high"):
        _check_trainer_accepts(path, f"{key}.{side}", name, numbers[side])
    return GridAxis(name=name, low=low, high=high, step=step)


def _check_grid_covers(path: Path, axis: GridAxis, value: float, dataset: str) -> None:
    """The authors' (configured) value of a gridded setting must be a grid value (start_from_defaults)."""
    if not any(abs(v - value) <= 1e-9 for v in axis.values()):
        raise _error(path, f"searcher.start_from_defaults is true but the authors' {dataset} value {axis.name} = "
                           f"{value!r} is not a value of the grid {axis.describe()} (eval_grid.{axis.name}); expected "
                           f"a grid that contains it: change low or step so that {value!r} is on the grid, or set "
                           f"searcher.start_from_defaults: false")


def _parse_point(path: Path, key: str, raw: Any, params: tuple[ParamSpec, ...]) -> dict[str, Any]:
    """One starting point: a mapping from searched parameters to values inside their ranges."""
    specs = {spec.name: spec for spec in params}
    if not isinstance(raw, Mapping) or not raw:
        raise _error(path, f"{key} = {raw!r}; expected a non-empty mapping from searched parameters "
                           f"({', '.join(specs)}) to values")
    point = {}
    for name, value in raw.items():
        if name not in specs:
            raise _error(path, f"{key}.{name} is not a searched parameter; expected one of "
                               f"{', '.join(specs)}{_suggest(name, specs)}")
        try:
            point[name] = specs[name].admit(value)
        except ValueError as exc:
            raise _error(path, f"{key}.{name} = {value!r} {exc}; expected a value allowed by "
                               f"params.{name} ({specs[name].describe()})") from None
    return point


# ---------------------------------------------------------------------------------------------------
# Small checks


def _error(path: Path, detail: str) -> SearchSpaceError:
    return SearchSpaceError(f"search space {path}: {detail}")


def _check_keys(path: Path, prefix: str, raw: Mapping, required: tuple, optional: tuple) -> None:
    """Unknown keys (with a did-you-mean) and missing required keys of one mapping."""
    allowed = tuple(required) + tuple(optional)
    for name in raw:
        if name not in allowed:
            raise _error(path, f"{prefix}{name} is not a known key; expected one of "
                               f"{', '.join(allowed)}{_suggest(name, allowed)}")
    for name in required:
        if name not in raw:
            raise _error(path, f"{prefix}{name} is missing; expected the keys {', '.join(required)}"
                               + (f" (and optionally {', '.join(optional)})" if optional else ""))


def _check_field(path: Path, key: str, name: Any) -> None:
    if name not in FIELD_NAMES:
        raise _error(path, f"{key} is not a training configuration field; expected a field of "
                           f"msdn.config.TrainConfig{_suggest(name, FIELD_NAMES)}")


def _check_trainer_accepts(path: Path, key: str, name: str, value: Any) -> None:
    """The trainer's own validation of one field value (alpha in [0, 1], lr > 0, ...)."""
    try:
        TrainConfig().replace(**{name: value}).validate()
    except ValueError as exc:
        raise _error(path, f"{key} = {value!r} is rejected by the trainer ({exc}); "
                           f"expected a valid value of {name}") from None


def _check_dataset(path: Path, file_dataset: str | None, dataset: str | None) -> None:
    if file_dataset is not None and dataset is not None and dataset != file_dataset:
        raise _error(path, f"dataset = {file_dataset!r} but the study runs on {dataset!r}; expected the "
                           f"search space written for {dataset} (search_spaces/{dataset}.yaml)")
    if dataset is not None and dataset not in DATASETS:
        raise _error(path, f"the study dataset {dataset!r} is unknown; expected one of {', '.join(DATASETS)}")


def _as_number(value: Any) -> int | float | None:
    """A finite int or float, or None. Numeric text is accepted: YAML reads `1e-5` (no dot) as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _integer(path: Path, key: str, value: Any) -> int:
    number = _as_number(value)
    if number is None or not float(number).is_integer():
        raise _error(path, f"{key} = {value!r}; expected an integer")
    return int(number)


def _suggest(name: Any, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _type_name(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"
