"""The `eval_grid` section of a search space: the values of the evaluation-time settings every evaluation scores.

    eval_grid:
      alpha: {low: 0.0, high: 1.0, step: 0.05}   # 21 values: 0.0, 0.05, ..., 1.0
      gamma: {low: -2.0, high: 6.0, step: 0.1}   # 81 values

alpha (sub-net fusion) and gamma (calibration offset) change no trained weight, so every value of the grid
is scored from one evaluation of each epoch (msdn.metrics.grid_evaluate) instead of costing a training run
each. `msdn.study.search_space` calls `parse_eval_grid` with its checks (a FieldChecks), so that messages name
the file and the dotted key like those of every other section.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from msdn.config import FieldChecks

EVAL_SETTINGS = ("alpha", "gamma")
GRID_AXIS_KEYS = ("low", "high", "step")
# The grid when a file has no eval_grid section: alpha over [0, 1], gamma over the calibration sweep.
DEFAULT_EVAL_GRID = {"alpha": {"low": 0.0, "high": 1.0, "step": 0.05}, "gamma": {"low": -2.0, "high": 6.0, "step": 0.1}}
# Points per axis at most: each alpha costs a calibration curve per evaluation, each gamma a column of one.
MAX_GRID_POINTS = 401


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

    def covers(self, value: float) -> bool:
        return any(abs(v - value) <= 1e-9 for v in self.values())

    def describe(self) -> str:
        return f"{self.name} {self.low:g} to {self.high:g} step {self.step:g} ({len(self.values())} values)"


def parse_eval_grid(f: FieldChecks, space: Mapping, searched: set[str]) -> tuple[GridAxis, ...]:
    """The optional `eval_grid` mapping of the file `space`: alpha and/or gamma, each {low, high, step}.

    Absent: DEFAULT_EVAL_GRID for each setting not searched under params (an explicit `eval_grid: {}` grids
    nothing). A setting both searched and gridded is an error: searched, it is fixed per trial (the old way);
    gridded, it is chosen per epoch.
    """
    if "eval_grid" not in space:
        return tuple(_parse_axis(f, f"eval_grid.{name} (default {DEFAULT_EVAL_GRID[name]})", name,
                                 DEFAULT_EVAL_GRID[name]) for name in EVAL_SETTINGS if name not in searched)
    raw = space["eval_grid"]
    raw = f.section("eval_grid", {} if raw is None else raw, (), EVAL_SETTINGS, expected="a mapping with the keys "
                    f"{', '.join(EVAL_SETTINGS)}, e.g. alpha: {{low: 0.0, high: 1.0, step: 0.05}}")
    for name in [name for name in raw if name in searched]:
        raise f.error(f"eval_grid.{name} is given but {name} is also searched under params.{name}; expected "
                      f"one of the two: a grid chooses {name} after every epoch at no training cost, "
                      f"params searches it per trial (the old way)")
    return tuple(_parse_axis(f, f"eval_grid.{name}", name, raw[name]) for name in EVAL_SETTINGS if name in raw)


def _parse_axis(f: FieldChecks, key: str, name: str, raw: Any) -> GridAxis:
    """One axis {low, high, step}: low <= high, step > 0, (high - low) / step whole, values the trainer accepts."""
    raw = f.section(key, raw, GRID_AXIS_KEYS, expected="a mapping such as {low: 0.0, high: 1.0, step: 0.05}")
    low, high = (float(bound) for bound in f.bounds(key, raw))
    step = float(f.number(f"{key}.step", raw["step"]))
    if not step > 0:
        raise f.error(f"{key}.step = {step:g}; expected a step > 0")
    intervals = (high - low) / step
    if abs(intervals - round(intervals)) > 1e-6:
        raise f.error(f"{key}: (high - low) / step = ({high:g} - {low:g}) / {step:g} = {intervals:.4g} is not a "
                      f"whole number; expected a step that divides the range, so that high is a grid value")
    if round(intervals) + 1 > MAX_GRID_POINTS:
        raise f.error(f"{key} has {round(intervals) + 1} values; expected at most {MAX_GRID_POINTS} (every value "
                      f"is scored after every epoch): use a larger step or a narrower range")
    f.check_value(f"{key}.low", name, low)
    f.check_value(f"{key}.high", name, high)
    return GridAxis(name=name, low=low, high=high, step=step)
