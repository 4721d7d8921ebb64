"""Search spaces for the hyperparameter study: the YAML format and its parser.

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

This module holds the format's own rules. What a field allows (type, range, whether a study may search
or fix it) is the field's FieldFacts in msdn/config.py; reading the file safely and the generic shape
checks (mappings, keys, numbers) are msdn.yamlfile's; the `eval_grid` section is msdn.study.eval_grid's.
Only `ParamSpec.to_tune` imports Ray, so the parser stays cheap to import.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from msdn.config import (DATASETS, FIELD_FACTS, FIELD_NAMES, FIELD_TYPES, FieldChecks, TrainConfig, coerce_value,
                         default_config)
from msdn.metrics import SCORE_KEYS, EvalGrid
from msdn.study.eval_grid import (DEFAULT_EVAL_GRID, EVAL_SETTINGS, GRID_AXIS_KEYS, MAX_GRID_POINTS,  # noqa: F401
                                  GridAxis, parse_eval_grid)
from msdn.yamlfile import YamlFileError, as_number, read_yaml, shown, suggest

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

REQUIRED_KEYS = ("metric", "mode", "asha", "params")
OPTIONAL_KEYS = ("dataset", "searcher", "fixed", "eval_grid")
ASHA_KEYS = ("max_t", "grace_period", "reduction_factor")
SEARCHER_KEYS = ("seed", "start_from_defaults", "points_to_evaluate")
PARAM_EXAMPLE = "{distribution: loguniform, low: 1.0e-5, high: 1.0e-3}"


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
            return f"choice of {shown(list(self.values))}"
        return f"{self.distribution} in [{self.low}, {self.high}]"

    def admit(self, value: Any) -> Any:
        """`value` converted to this parameter's type; ValueError (a phrase) when it is outside the range."""
        if self.distribution == "choice":
            try:
                value = coerce_value(self.name, value)
            except ValueError:
                raise ValueError(f"is not one of {shown(list(self.values))}") from None
            if value not in self.values:
                raise ValueError(f"is not one of {shown(list(self.values))}")
            return value
        number = as_number(value)
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

        if self.distribution == "choice":
            return tune.choice(list(self.values))
        domain = {"loguniform": tune.loguniform, "uniform": tune.uniform, "int": tune.randint,
                  "logint": tune.lograndint}[self.distribution]
        return domain(self.low, self.high + 1 if self.distribution in INT_DISTRIBUTIONS else self.high)


@dataclass(frozen=True)
class AshaSettings:
    """ASHA early stopping, in epochs (one reported result per epoch)."""

    max_t: int
    grace_period: int
    reduction_factor: float


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
        f = SpaceChecks(self.path)
        f.check_dataset(self.dataset, dataset)
        points = []
        if self.start_from_defaults:
            try:
                config = default_config(dataset, **self.fixed)
            except ValueError as exc:
                raise f.error(f"fixed = {shown(self.fixed)} does not combine with the authors' {dataset} "
                              f"configuration ({exc}); expected valid values") from None
            for axis in self.grid:
                if not axis.covers(value := getattr(config, axis.name)):
                    raise f.error(f"searcher.start_from_defaults is true but the authors' {dataset} value "
                                  f"{axis.name} = {shown(value)} is not a value of the grid {axis.describe()} "
                                  f"(eval_grid.{axis.name}); expected a grid that contains it: change low or step so "
                                  f"that {shown(value)} is on the grid, or set searcher.start_from_defaults: false")
            authors = {}
            for spec in self.params:
                value = getattr(config, spec.name)
                try:
                    authors[spec.name] = spec.admit(value)
                except ValueError as exc:
                    raise f.error(f"searcher.start_from_defaults is true but the authors' {dataset} value "
                                  f"{spec.name} = {shown(value)} {exc} (params.{spec.name}); expected a range that "
                                  f"contains it: widen params.{spec.name} to include {shown(value)}, or set "
                                  "searcher.start_from_defaults: false") from None
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
    f = SpaceChecks(Path(path))
    try:
        raw = read_yaml(f.path)
    except FileNotFoundError:
        raise f.error("the file does not exist; expected a YAML search space file") from None
    except IsADirectoryError:
        raise f.error("the path is a folder; expected a YAML search space file") from None
    except YamlFileError as exc:
        raise f.error(f"the file {exc}") from None
    if not isinstance(raw, Mapping):
        raise f.error(f"found {'nothing' if raw is None else 'a ' + type(raw).__name__} at the top level; expected a "
                      f"mapping with the keys {', '.join(REQUIRED_KEYS)} (and optionally {', '.join(OPTIONAL_KEYS)})")
    f.check_keys("", raw, REQUIRED_KEYS, OPTIONAL_KEYS)

    file_dataset = raw.get("dataset")
    if file_dataset is not None and (not isinstance(file_dataset, str) or file_dataset not in DATASETS):
        raise f.error(f"dataset = {shown(file_dataset)} is not a known dataset; expected one of {', '.join(DATASETS)}")
    f.check_dataset(file_dataset, dataset)
    metric = raw["metric"]
    if not isinstance(metric, str) or metric not in METRICS:
        raise f.error(f"metric = {shown(metric)} is not a metric the trials report; expected one of "
                      f"{', '.join(METRICS)}{suggest(metric, METRICS)}")
    mode = raw["mode"]
    if mode not in ("max", "min"):
        raise f.error(f"mode = {shown(mode)}; expected max or min")
    if mode != METRICS[metric]:
        raise f.error(f"mode = {shown(mode)} but metric {metric} improves when it goes "
                      f"{'up' if METRICS[metric] == 'max' else 'down'}; expected mode: {METRICS[metric]}")

    asha = _parse_asha(f, raw["asha"])
    seed, start_from_defaults, raw_points = _parse_searcher(f, raw.get("searcher"))
    fixed = _parse_fixed(f, raw.get("fixed"))
    params = tuple(_parse_param(f, name, spec, fixed) for name, spec in
                   f.section("params", raw["params"], expected="a non-empty mapping from training configuration "
                             f"fields to distributions, e.g. lr: {PARAM_EXAMPLE}", nonempty=True).items())
    points = tuple(_parse_point(f, f"searcher.points_to_evaluate[{i}]", point, params)
                   for i, point in enumerate(raw_points))
    grid = parse_eval_grid(f, raw, {spec.name for spec in params})

    space = SearchSpace(path=f.path, dataset=file_dataset, metric=metric, mode=mode, asha=asha,
                        sampler_seed=seed, start_from_defaults=start_from_defaults,
                        points_to_evaluate=points, fixed=fixed, params=params, grid=grid)
    if dataset or file_dataset:
        space.initial_points(dataset or file_dataset)  # fails now if the authors' values are out of range
    return space


# ---------------------------------------------------------------------------------------------------
# Sections


def _parse_asha(f: SpaceChecks, raw: Any) -> AshaSettings:
    """The `asha` mapping: max_t >= 1, 1 <= grace_period <= max_t, reduction_factor > 1."""
    raw = f.section("asha", raw, ASHA_KEYS)
    max_t = f.integer("asha.max_t", raw["max_t"])
    if max_t < 1:
        raise f.error(f"asha.max_t = {max_t}; expected at least 1 epoch")
    grace = f.integer("asha.grace_period", raw["grace_period"])
    if not 1 <= grace <= max_t:
        raise f.error(f"asha.grace_period = {grace} with asha.max_t = {max_t}; expected 1 <= grace_period <= max_t")
    factor = f.number("asha.reduction_factor", raw["reduction_factor"], "a number greater than 1")
    if not factor > 1:
        raise f.error(f"asha.reduction_factor = {factor}; expected a number greater than 1 "
                      f"(the share of trials kept at each rung is 1 / reduction_factor)")
    return AshaSettings(max_t=max_t, grace_period=grace, reduction_factor=float(factor))


def _parse_searcher(f: SpaceChecks, raw: Any) -> tuple[int, bool, list]:
    """The optional `searcher` mapping: seed (0), start_from_defaults (true), points_to_evaluate ([])."""
    raw = {} if raw is None else f.section("searcher", raw, (), SEARCHER_KEYS)
    seed = f.integer("searcher.seed", raw.get("seed", 0))
    start, points = raw.get("start_from_defaults", True), raw.get("points_to_evaluate")
    if not isinstance(start, bool):
        raise f.error(f"searcher.start_from_defaults = {shown(start)}; expected true or false")
    if not isinstance(points, (list, type(None))):
        raise f.error(f"searcher.points_to_evaluate = {shown(points)}; expected a list of mappings "
                      f"from parameter names to values")
    return seed, start, points or []


def _parse_fixed(f: SpaceChecks, raw: Any) -> dict[str, Any]:
    """The optional `fixed` mapping of TrainConfig fields, converted to their types and validated."""
    raw = {} if raw is None else f.section("fixed", raw, expected="a mapping from training configuration fields "
                                                                  "to values")
    fixed = {}
    for name, value in raw.items():
        f.check_field("fixed", name, searched=False)
        try:
            fixed[name] = coerce_value(name, value)
        except ValueError as exc:
            raise f.error(f"fixed.{name} = {shown(value)} has the wrong type ({exc})") from None
    try:
        TrainConfig().replace(**fixed).validate()
    except ValueError as exc:
        raise f.error(f"fixed = {shown(dict(raw))} is rejected by the trainer ({exc}); "
                      f"expected valid values of those fields") from None
    return fixed


def _parse_param(f: SpaceChecks, name: Any, raw: Any, fixed: Mapping[str, Any]) -> ParamSpec:
    """One entry of `params`; see docs/search_spaces.md for the rules."""
    f.check_field("params", name, searched=True)
    key, kind = f"params.{name}", FIELD_TYPES[name]
    if name in fixed:
        raise f.error(f"{key} is searched but also fixed (fixed.{name} = {shown(fixed[name])}); "
                      f"expected a field to be either fixed or searched, not both")
    raw = f.section(key, raw, ("distribution",), ("low", "high", "values"),
                    expected=f"a mapping such as {PARAM_EXAMPLE}")
    distribution = raw["distribution"]
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise f.error(f"{key}.distribution = {shown(distribution)} is not a known distribution; expected one of "
                      f"{', '.join(DISTRIBUTIONS)}{suggest(distribution, DISTRIBUTIONS)}")
    if kind in (bool, str) and distribution != "choice":
        raise f.error(f"{key}.distribution = {distribution} but {name} is a {kind.__name__} field; "
                      f"expected distribution: choice")
    if kind is int and distribution not in INT_DISTRIBUTIONS + ("choice",):
        raise f.error(f"{key}.distribution = {distribution} would give {name} fractional values but it "
                      f"is an integer field; expected int, logint or choice")
    if distribution == "choice" and (given := [side for side in ("low", "high") if side in raw]):
        raise f.error(f"{key}.{given[0]} is given for a choice distribution; expected values only "
                      f"(low and high belong to uniform, loguniform, int and logint)")
    if distribution == "choice":
        return ParamSpec(name=name, distribution="choice", values=_parse_values(f, key, name, raw.get("values")))
    if "values" in raw:
        raise f.error(f"{key}.values is given for a {distribution} distribution; "
                      f"expected low and high only (values belongs to distribution: choice)")
    integer = distribution in INT_DISTRIBUTIONS
    low, high = f.bounds(key, raw, f"a number for a {distribution} distribution", integer)
    if low == high and not integer:
        raise f.error(f"{key}.low = {key}.high = {low}; expected low < high for a {distribution} "
                      f"distribution (move {name} to fixed to hold it constant)")
    if distribution in LOG_DISTRIBUTIONS and low <= 0:
        raise f.error(f"{key}.low = {low} for a {distribution} distribution; expected low > 0 "
                      f"(a log scale cannot reach zero or below; use uniform or int instead)")
    f.check_value(f"{key}.low", name, low)
    f.check_value(f"{key}.high", name, high)
    return ParamSpec(name=name, distribution=distribution, low=low, high=high)


def _parse_values(f: SpaceChecks, key: str, name: str, values: Any) -> tuple:
    """The `values` of a choice: a non-empty list of distinct values of the field's type that the trainer accepts."""
    if not isinstance(values, list) or not values:
        raise f.error(f"{key}.values = {shown(values)}; expected a non-empty list of values for a choice "
                      f"distribution, e.g. values: [0.0, 0.9]")
    coerced = []
    for i, value in enumerate(values):
        try:
            value = coerce_value(name, value)
        except ValueError as exc:
            raise f.error(f"{key}.values[{i}] = {shown(value)} has the wrong type ({exc})") from None
        if value in coerced:
            raise f.error(f"{key}.values[{i}] = {shown(value)} is listed twice; expected distinct values")
        f.check_value(f"{key}.values[{i}]", name, value)
        coerced.append(value)
    return tuple(coerced)


def _parse_point(f: SpaceChecks, key: str, raw: Any, params: tuple[ParamSpec, ...]) -> dict[str, Any]:
    """One starting point: a mapping from searched parameters to values inside their ranges."""
    specs = {spec.name: spec for spec in params}
    raw = f.section(key, raw, nonempty=True,
                    expected=f"a non-empty mapping from searched parameters ({', '.join(specs)}) to values")
    point = {}
    for name, value in raw.items():
        if name not in specs:
            raise f.error(f"{key}.{shown(name, 40, bare=True)} is not a searched parameter; expected one of "
                          f"{', '.join(specs)}{suggest(name, specs)}")
        try:
            point[name] = specs[name].admit(value)
        except ValueError as exc:
            raise f.error(f"{key}.{name} = {shown(value)} {exc}; expected a value allowed by "
                          f"params.{name} ({specs[name].describe()})") from None
    return point


# ---------------------------------------------------------------------------------------------------
# The checks every section shares, bound to the file they report

class SpaceChecks(FieldChecks):
    """The shape and field-value checks (msdn.config.FieldChecks), reporting `search space <path>: ...`."""

    def __init__(self, path: Path) -> None:
        super().__init__(lambda detail: SearchSpaceError(f"search space {path}: {detail}"))
        self.path = path

    def check_field(self, section: str, name: Any, *, searched: bool) -> None:
        """`name` is a TrainConfig field that a study may search (`searched`) or fix (its FieldFacts.study)."""
        if name not in FIELD_NAMES:
            raise self.error(f"{section}.{shown(name, 40, bare=True)} is not a training configuration field; "
                             f"expected a field of msdn.config.TrainConfig{suggest(name, FIELD_NAMES)}")
        role = FIELD_FACTS[name].study
        if searched and not role.search:
            raise self.error(f"{section}.{name} cannot be searched: {role.why}; expected it removed from params")
        if not searched and not role.fix:
            raise self.error(f"{section}.{name} cannot be set in a search space: {role.why}; "
                             "expected it removed from fixed")

    def check_dataset(self, file_dataset: str | None, dataset: str | None) -> None:
        if file_dataset is not None and dataset is not None and dataset != file_dataset:
            raise self.error(f"dataset = {shown(file_dataset)} but the study runs on {shown(dataset)}; expected the "
                             f"search space written for {dataset} (search_spaces/{dataset}.yaml)")
        if dataset is not None and dataset not in DATASETS:
            raise self.error(f"the study dataset {shown(dataset)} is unknown; expected one of {', '.join(DATASETS)}")
