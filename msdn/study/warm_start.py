"""Warm start: a new study's Optuna search seeded by an earlier study (`--warm-start PATH`).

PATH is the earlier study's result folder, `<storage>/<experiment>/`, holding its Optuna journal. What
the earlier trials are worth depends on whether their values mean the same in the new study:

- Same benchmark and search space (`comparable`: the same dataset and data, metric, mode, epochs per
  trial, fixed settings, settings grid and searched parameters; ranges may differ): every COMPLETE and
  PRUNED earlier trial whose values lie within the new ranges enters the new study as evidence, as it
  was (value, intermediate values, state), without running (`Study.add_trial`). TPE fits them at once.
- Anything else (another benchmark, another search space, or a study from before the studies recorded
  their facts): values are not comparable, so only the earlier study's best `BEST_POINTS`
  configurations are tried first (`Study.enqueue_trial`), restricted to the parameters the new study
  searches and clipped to its ranges (a choice outside the new values is left to the sampler).

Every such Optuna trial carries the user attribute `warm_start_from` (the earlier folder), and a trial
that runs has the same tag on its MLflow run (`trial_tags`, read by the MLflow callback). A study
records its facts as the user attribute `msdn_study` (`study_facts`), which is what a later warm start
compares. The earlier journal is read from a copy: nothing in the earlier folder is ever written.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, distribution_to_json
from optuna.trial import FrozenTrial, TrialState


WARM_START_ATTR = "warm_start_from"  # Optuna user attribute and MLflow tag
FACTS_ATTR = "msdn_study"  # Optuna study user attribute: what makes the study's values comparable
BEST_POINTS = 3  # configurations of an earlier study on another benchmark tried first


class WarmStartError(ValueError):
    """--warm-start names no readable study folder (the message names the flag)."""


def benchmark_id(dataset: str, data_root: str | Path) -> str:
    """The benchmark's identity: its name and a digest of its class attributes and splits (att_splits.mat), so
    that the same data under another root matches and another generator seed of the synthetic one does not."""
    from msdn.data.layout import benchmark_paths

    digest = hashlib.sha256(benchmark_paths(dataset, data_root).att_splits.read_bytes()).hexdigest()
    return f"{dataset}:{digest[:16]}"


def study_facts(dataset: str, data_root: str | Path, space: Any, max_epochs: int) -> dict[str, Any]:
    """What a trial's value depends on besides its parameters (the searcher adds the parameters' distributions)."""
    return {"benchmark": benchmark_id(dataset, data_root), "metric": space.metric, "mode": space.mode,
            "max_epochs": int(max_epochs), "fixed": json.loads(json.dumps(space.fixed, default=str)),
            "grid": space.describe_grid()}


def with_params(facts: dict[str, Any], distributions: dict[str, BaseDistribution]) -> dict[str, Any]:
    return {**facts, "params": {name: json.loads(distribution_to_json(d)) for name, d in sorted(distributions.items())}}


def comparable(earlier: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether the earlier study's values mean the same here: equal facts and searched names (ranges may differ)."""
    if not earlier:
        return False
    same = all(earlier.get(key) == value for key, value in new.items() if key != "params")
    return same and set(earlier.get("params", {})) == set(new.get("params", {}))


# ---------------------------------------------------------------------------------------------------
# The earlier study


@dataclass(frozen=True)
class EarlierStudy:
    """The finished (COMPLETE and PRUNED) trials of an earlier study, and its facts."""

    source: str  # its result folder, as the new trials name it
    study_name: str
    maximize: bool
    facts: dict[str, Any] | None
    trials: tuple[FrozenTrial, ...]

    def ranked(self) -> list[FrozenTrial]:
        """Best first, as TPE ranks them: COMPLETE by value, then PRUNED by the deepest epoch, then its value."""
        sign = -1.0 if self.maximize else 1.0

        def key(t: FrozenTrial) -> tuple:
            if t.state == TrialState.COMPLETE:
                return (0, 0, sign * t.value)
            step = max(t.intermediate_values, default=0)
            value = t.intermediate_values.get(step, math.nan)
            return (1, -step, sign * value if math.isfinite(value) else math.inf)

        return sorted(self.trials, key=key)


def journal_of(folder: str | Path, journal_file: str) -> Path:
    """The earlier study's journal; WarmStartError naming --warm-start when `folder` is no study's result folder."""
    path = Path(folder)
    expected = (f"expected the result folder of an earlier study, <storage-path>/<experiment>, holding its Optuna "
                f"journal {journal_file}")
    if not path.is_dir():
        raise WarmStartError(f"--warm-start {folder}: {'is not a folder' if path.exists() else 'does not exist'}; "
                             f"{expected}")
    if not (path / journal_file).is_file():
        raise WarmStartError(f"--warm-start {folder}: no {journal_file} in it; {expected}")
    return path / journal_file


def load_earlier_study(folder: str | Path, journal_file: str) -> EarlierStudy:
    """The earlier study in `folder` (its journal: `journal_file`), read from a copy of the journal: the earlier
    study's files stay untouched. WarmStartError naming --warm-start for anything that is not such a study."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = journal_of(folder, journal_file)
    with tempfile.TemporaryDirectory(prefix="msdn-warm-start-") as tmp:
        copy = Path(tmp) / journal_file
        shutil.copyfile(journal, copy)
        try:
            storage = JournalStorage(JournalFileBackend(str(copy)))
            studies = storage.get_all_studies()
        except Exception as exc:  # a truncated or foreign file
            raise WarmStartError(f"--warm-start {folder}: {journal} is not a readable Optuna journal ({exc})") from None
        if not studies:
            raise WarmStartError(f"--warm-start {folder}: {journal} holds no Optuna study (an empty or foreign file); "
                                 f"expected the journal of an earlier study")
        named = [s for s in studies if s.study_name == Path(folder).name]
        if len(named) != 1 and len(studies) != 1:
            raise WarmStartError(f"--warm-start {folder}: {journal} holds {len(studies)} studies and none is named "
                             f"{Path(folder).name!r}; expected the journal of one study")
        summary = (named or studies)[0]
        if len(summary.directions) != 1:
            raise WarmStartError(f"--warm-start {folder}: its study has {len(summary.directions)} objectives; expected one")
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = tuple(study.get_trials(deepcopy=True, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return EarlierStudy(str(Path(folder).resolve()), summary.study_name,
                        summary.directions[0] == optuna.study.StudyDirection.MAXIMIZE,
                        summary.user_attrs.get(FACTS_ATTR), trials)


# ---------------------------------------------------------------------------------------------------
# Seeding the new study


def within(params: dict[str, Any], distributions: dict[str, BaseDistribution]) -> bool:
    """Whether `params` name exactly the searched parameters, each inside its (new) distribution."""
    if set(params) != set(distributions):
        return False
    return all(inside(params[name], d) for name, d in distributions.items())


def inside(value: Any, d: BaseDistribution) -> bool:
    """Whether `value` is one `d` can sample (a choice in its list; a number in its range, on its step)."""
    if isinstance(d, CategoricalDistribution):
        return any(type(value) is type(choice) and value == choice for choice in d.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if not d.low <= value <= d.high:
        return False
    step = getattr(d, "step", None)  # an IntDistribution always has one (1 by default); a float's may be None
    if step is None:
        return True
    steps = (value - d.low) / step
    return math.isclose(steps, round(steps), abs_tol=1e-8)


def clipped(params: dict[str, Any], distributions: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The searched parameters among `params`, numbers clipped into the new ranges (and onto an int's step);
    a choice the new values lack is dropped (the sampler picks it)."""
    point = {}
    for name, d in distributions.items():
        if name not in params:
            continue
        value = params[name]
        if isinstance(d, CategoricalDistribution):
            if value in d.choices:
                point[name] = value
            continue
        try:
            value = min(max(float(value), d.low), d.high)
        except (TypeError, ValueError):
            continue
        step = getattr(d, "step", None)
        if step is not None:
            value = min(d.low + round((value - d.low) / step) * step, d.high)
        point[name] = int(round(value)) if isinstance(d, optuna.distributions.IntDistribution) else value
    return point


@dataclass(frozen=True)
class WarmStart:
    """What a warm start put into the new study."""

    source: str
    evidence: int  # earlier trials added as they were
    left_out: int  # earlier finished trials outside the new ranges (evidence) or not among the best (enqueued)
    enqueued: tuple[dict[str, Any], ...]  # configurations tried first

    def describe(self) -> str:
        if self.evidence or not self.enqueued:
            return (f"warm start from {self.source}: {self.evidence} earlier trials as evidence (same benchmark and "
                    f"search space), {self.left_out} outside the new ranges left out")
        return (f"warm start from {self.source}: its best {len(self.enqueued)} configurations tried first (another "
                f"benchmark or search space: values not comparable)")


def seed_study(study: optuna.Study, earlier: EarlierStudy, facts: dict[str, Any],
               distributions: dict[str, BaseDistribution], best: int = BEST_POINTS) -> WarmStart:
    """Put the earlier study into the new, empty `study` (see the module docstring); `facts`: the new study's,
    parameters included (`with_params`)."""
    marked = {WARM_START_ATTR: earlier.source}
    if comparable(earlier.facts, facts):
        kept = [t for t in earlier.trials if within(t.params, distributions)]
        study.add_trials([optuna.trial.create_trial(
            params=t.params, distributions=distributions, value=t.value, intermediate_values=t.intermediate_values,
            state=t.state, user_attrs={**t.user_attrs, **marked}) for t in kept])
        return WarmStart(earlier.source, len(kept), len(earlier.trials) - len(kept), ())
    points: list[dict[str, Any]] = []
    for trial in earlier.ranked():
        point = clipped(trial.params, distributions)
        if point and point not in points:
            points.append(point)
        if len(points) == best:
            break
    for point in points:
        study.enqueue_trial(point, user_attrs=marked)
    return WarmStart(earlier.source, 0, len(earlier.trials) - len(points), tuple(points))


# ---------------------------------------------------------------------------------------------------
# The MLflow tag of a trial that came from an earlier study

# Tune trial id -> the earlier study's folder. The searcher and the MLflow callback run in the same process
# (the Tune driver), and Tune's trial ids are unique, so one table per process serves every study in it.
_FROM: dict[str, str] = {}


def mark_trial(trial_id: str, source: str) -> None:
    _FROM[trial_id] = source


def trial_tags(trial_id: str) -> dict[str, str]:
    """The MLflow tags of the trial's run that say where it came from (none for a trial of this study's own)."""
    return {WARM_START_ATTR: _FROM[trial_id]} if trial_id in _FROM else {}
