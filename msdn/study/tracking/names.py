"""Run names that read at a glance in MLflow's nested run list.

    trial   t07 lr=3.1e-4 λdis=2.0e-3 λcal=0.12   (Tune's trial number, then searched values)
    refit   refit tuned seed=3, refit authors seed=3

A name is given once, when the run is created; a resumed study finds its runs by their tags
(`trial_id`, `refit.name`) and never renames them. Pure functions: no MLflow, no Ray.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

from msdn.config import FIELD_FACTS
from msdn.study.results import BASELINE, TUNED

# Searched parameter -> its label in a run name, from the fields' `label` and `label_rank` (msdn/config.py).
# The order is the preference: a trial's name shows the first of these the study searches, then any other
# searched parameter under its own name.
PARAM_LABELS = {name: facts.label for name, facts in
                sorted(((n, f) for n, f in FIELD_FACTS.items() if f.label is not None),
                       key=lambda item: item[1].label_rank if item[1].label_rank is not None else math.inf)}
MAX_NAMED_PARAMS = 3  # the UI's Run Name column shows about 25 characters before it cuts: the first matter most
MAX_NAME_CHARS = 60
REFIT_LABELS = {TUNED: "tuned", BASELINE: "authors"}


def compact(value: Any, digits: int = 2) -> str:
    """`value` with `digits` significant digits: decimal from 0.01 to 9999 (0.12, 2.0, 0.90), else
    scientific with a bare exponent (3.1e-4, 1.2e5); integers, booleans and text as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    power = int(exponent)
    if -2 <= power < 4:
        return f"{float(f'{mantissa}e{power}'):.{max(digits - 1 - power, 0)}f}"
    return f"{mantissa}e{power}"


def trial_number(experiment_tag: str | None) -> int | None:
    """Tune's 1-based trial number, the head of a trial's experiment tag (`7_lr=0.0003,...`); None without one."""
    match = re.match(r"(\d+)(_|$)", experiment_tag or "")
    return int(match.group(1)) if match else None


def param_labels(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, label) of the searched parameters a name shows, most wanted first (PARAM_LABELS' order)."""
    names = [n for n in PARAM_LABELS if n in config] + [n for n in config if n not in PARAM_LABELS]
    return [(n, PARAM_LABELS.get(n, n)) for n in names[:MAX_NAMED_PARAMS]]


def trial_run_name(number: int | None, config: Mapping[str, Any], trial_id: str = "") -> str:
    """`t07 lr=3.1e-4 λdis=2.0e-3 λcal=0.12`: the trial number (the trial id without one), then up to
    MAX_NAMED_PARAMS searched values, as many as fit in MAX_NAME_CHARS."""
    name = f"t{number:02d}" if number is not None else trial_id or "trial"
    for key, label in param_labels(config):
        part = f" {label}={compact(config[key])}"
        if len(name) + len(part) > MAX_NAME_CHARS:
            break
        name += part
    return name


def trial_run_name_of(trial) -> str:
    """The run name of a Tune trial (what the MLflow callback reads of it: experiment_tag, config, trial_id)."""
    return trial_run_name(trial_number(getattr(trial, "experiment_tag", "")), dict(trial.config), trial.trial_id)


def refit_run_name(config: str, seed: int) -> str:
    """`refit tuned seed=3` or `refit authors seed=3` (the authors' configuration, BASELINE)."""
    return f"refit {REFIT_LABELS.get(config, config)} seed={seed}"
