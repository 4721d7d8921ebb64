"""The study's Optuna side: the searcher, the journal its study is kept in, and reading that study back.

`StudySearcher` is Ray Tune's OptunaSearch with three changes:

- Starting points may be partial. Ray's `OptunaSearch(points_to_evaluate=...)` insists that every
  point names every searched parameter, while the search-space format lets a point name only some
  (docs/search_spaces.md: "missing parameters are sampled"); Optuna's `Study.enqueue_trial` fixes the
  given parameters and samples the rest, so the points are enqueued once, when the study is created.
- Optuna is told what ASHA did. Every epoch's value of the study metric is an intermediate value of the
  Optuna trial (`trial.report(value, epoch)`, including the epoch at which the trial stopped, which Tune
  hands over only at completion); a trial stopped before `max_epochs` is finished as PRUNED, one that ran
  them all as COMPLETE with its best epoch's value. Ray's OptunaSearch tells every stopped trial COMPLETE
  with its last value, so TPE would read a 2-epoch H as a trial's final quality.
- The study is kept in a journal file next to Tune's results (`JournalStorage(JournalFileBackend)`: it
  survives a kill, works on shared filesystems), named after the experiment, so `optuna-dashboard` opens
  it and `--resume` continues it, pruned trials included.

Its sampler is TPE with settings chosen by measurement (`TpeSettings`, benchmarks/README.md): a start-up
of random trials scaled to the study's number of trials, multivariate, a constant liar for trials that run
at once.

    optuna-dashboard results/msdn-synthetic-val/optuna_study.journal
"""
from __future__ import annotations

import logging
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from msdn.study import ray_private
from msdn.study.options import JOURNAL_FILE, StudyError
from msdn.study.warm_start import FACTS_ATTR, WARM_START_ATTR, load_earlier_study, mark_trial, seed_study, with_params

logger = logging.getLogger(__name__)

# Importances are fitted on COMPLETE trials only; with fewer than this they are noise.
MIN_TRIALS_FOR_IMPORTANCE = 4


@dataclass(frozen=True)
class TpeSettings:
    """The study's TPE sampler (measured: benchmarks/README.md, bench_search). Optuna's fixed start-up of 10
    random trials is most of a 12-trial study; here it scales with the study's trials, with a floor. No
    `group`: every trial has every searched parameter, so the decomposition would find one group."""

    # A quarter of the study's trials (--num-samples), rounded up: 10 of a 40-trial study, the count of 4, 8 and
    # 10 that reached random+asha's final best soonest (bench_search, 10 seeds). At least 4, since TPE's density
    # estimates need a few finished (COMPLETE or PRUNED) trials: a 12-trial study gets 4 random trials and 8
    # guided ones, where Optuna's default of 10 would leave TPE 2.
    startup_share: float = 0.25
    min_startup: int = 4
    n_ei_candidates: int = 24  # Optuna's default
    multivariate: bool = True  # joint density over the parameters (Optuna 5's default for one objective)
    constant_liar: bool = True  # running trials count as bad, so trials running at once differ

    def startup_trials(self, num_samples: int) -> int:
        return max(self.min_startup, math.ceil(self.startup_share * num_samples))

    def sampler(self, seed: int | None, num_samples: int) -> optuna.samplers.TPESampler:
        import warnings

        with warnings.catch_warnings():  # group/multivariate were experimental once; nothing to act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(n_startup_trials=self.startup_trials(num_samples),
                                              n_ei_candidates=self.n_ei_candidates, multivariate=self.multivariate,
                                              constant_liar=self.constant_liar, seed=seed)


TPE = TpeSettings()


def journal_path(experiment_path: str) -> Path | None:
    """Where a study's Optuna journal lives: its Tune experiment folder; None under object storage (s3://...),
    where the study stays in Tune's saved searcher state only."""
    if "://" in experiment_path:
        return None
    return Path(experiment_path) / JOURNAL_FILE


def check_journal(path: Path, *, resume: bool) -> None:
    """A new study must not find a journal at `path` (it would continue a stranger's trials); a resumed study
    must (its trials, pruned ones included, are the state being resumed)."""
    if resume and not path.is_file():
        raise StudyError(f"--resume: the Optuna journal {path} is missing; expected the file the interrupted study "
                         f"wrote there (its trials, pruned ones included, are the searcher's state)")
    if not resume and path.exists():
        raise StudyError(f"{path} exists, from an earlier study of the same name; expected no Optuna journal for a "
                         f"new study: continue that study with --resume, choose another --experiment, or remove it")
    if resume:
        drop_cut_entry(path)


def drop_cut_entry(path: Path) -> bool:
    """Remove a last journal entry that a full disk (or a kill) cut short; True when there was one.

    Optuna appends one JSON line per operation and never acknowledged a line without its newline: without
    this, the next entry appended to the fragment would make the whole journal unreadable.
    """
    with open(path, "rb+") as f:
        size = f.seek(0, 2)
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        keep, position = 0, size
        while position > 0 and not keep:
            start = max(0, position - (1 << 16))
            f.seek(start)
            block = f.read(position - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
            position = start
        f.truncate(keep)
    return True


def journal_storage(path: Path, *, resume: bool) -> JournalStorage:
    """The journal storage at `path`, after `check_journal`."""
    check_journal(path, resume=resume)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def dashboard_command(path: Path) -> str:
    return f"optuna-dashboard {shlex.quote(str(path))}"


class StudySearcher(OptunaSearch):
    """OptunaSearch with partial starting points, PRUNED trials for ASHA's stops, and a persisted study."""

    def __init__(self, *, starting_points: list[dict[str, Any]] | None = None, max_epochs: int | None = None,
                 journal: Path | None = None, resume: bool = False, num_samples: int | None = None,
                 facts: dict[str, Any] | None = None, warm_start: str | Path | None = None, **kwargs: Any) -> None:
        """`num_samples`: the study's trials; given (and no `sampler`), the sampler is TPE with the study's
        settings (`TPE`) and `seed`; otherwise OptunaSearch's own default sampler, or `sampler`.
        `facts`: what the study's values depend on (`warm_start.study_facts`), recorded in a new study for later
        warm starts; `warm_start`: an earlier study's result folder whose trials seed a new study."""
        if num_samples is not None and kwargs.get("sampler") is None:
            kwargs["sampler"] = TPE.sampler(kwargs.pop("seed", None), num_samples)
        self._facts = facts
        # Read now, in the driver: the searcher is pickled with the Tuner, so a resume needs no earlier folder.
        self._earlier = load_earlier_study(warm_start, JOURNAL_FILE) if warm_start is not None else None
        self.warm_started = None  # what the warm start put into the study (warm_start.WarmStart)
        self._starting_points = [dict(point) for point in starting_points or []]
        self._max_epochs = max_epochs  # a trial that stops before it was stopped early (ASHA)
        self._journal = journal
        if journal is not None:
            kwargs["storage"] = journal_storage(journal, resume=resume)
        super().__init__(**kwargs)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Tune hands over the search space and creates the Optuna study here; then the starting points go in."""
        if not super().set_search_properties(metric, mode, config, **spec):
            return False
        study = ray_private.optuna_study(self)
        study.set_metric_names([self.metric])  # optuna-dashboard shows the study metric's name, not "Objective 0"
        # Tune sets up a resumed searcher again before restoring its state: a journal study that has trials
        # already holds the starting points, and enqueuing them again would run them twice.
        if not study.get_trials(deepcopy=False):
            self._seed_new_study(study)
        self._starting_points, self._earlier = [], None  # once: the Optuna study (saved with the searcher) keeps them
        return True

    def _seed_new_study(self, study) -> None:
        """A new study: its facts, the earlier study's trials (warm start), then the starting points (those the
        earlier study's evidence already holds are not run again)."""
        space = ray_private.optuna_space(self)
        facts = with_params(self._facts or {}, space if isinstance(space, dict) else {})
        if self._facts is not None:
            study.set_user_attr(FACTS_ATTR, facts)
        if self._earlier is not None:
            self.warm_started = seed_study(study, self._earlier, facts, space)
            logger.warning(self.warm_started.describe())  # WARNING: the level that reaches the study's log file
        known = [t.params for t in study.get_trials(deepcopy=False)]
        for point in self._starting_points:
            if not any(point.items() <= params.items() for params in known):
                study.enqueue_trial(point)

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        self._mark(trial_id)
        return config

    def _mark(self, trial_id: str) -> None:
        """A trial enqueued from an earlier study: its MLflow run gets the tag (`warm_start.trial_tags`)."""
        ot_trial = ray_private.optuna_trials(self).get(trial_id)
        source = ot_trial.user_attrs.get(WARM_START_ATTR) if ot_trial is not None else None
        if source:
            mark_trial(trial_id, source)

    # -- what Tune tells the searcher --------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = ray_private.optuna_trials(self).get(trial_id)
        if ot_trial is not None:
            self._report(ot_trial, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = ray_private.optuna_trials(self).get(trial_id)
        completed = ray_private.completed_trial_ids(self)
        if ot_trial is None or trial_id in completed:
            return
        completed.add(trial_id)
        if self._frozen(ot_trial).state.is_finished():
            return  # told before the study was interrupted; its state stands
        if result:
            self._report(ot_trial, result)  # the epoch at which ASHA stopped it never came as a result
        steps = self._frozen(ot_trial).intermediate_values
        finite = [v for v in steps.values() if math.isfinite(v)]
        epochs = int((result or {}).get("training_iteration", max(steps, default=0)))
        if error or not finite:
            state, value = TrialState.FAIL, None
        elif getattr(self, "_max_epochs", None) is not None and epochs < self._max_epochs:
            state, value = TrialState.PRUNED, None  # Optuna records its last intermediate value
        else:
            state, value = TrialState.COMPLETE, (max(finite) if self.mode == "max" else min(finite))
        # Right for TPE (Optuna 5, _split_trials): PRUNED trials rank below every COMPLETE one, deeper epochs
        # first, so a stopped trial counts as "worse than finished ones, better the further it got".
        try:
            ray_private.optuna_study(self).tell(ot_trial, value, state=state)
        except Exception as exc:  # a trial another process finished; keep the study going
            logger.warning("Optuna refused to finish trial %s as %s: %s", ot_trial.number, state.name, exc)

    def _report(self, ot_trial, result: dict) -> None:
        """Report the result's metric as the intermediate value of its epoch, once (resumed epochs repeat)."""
        value, step = result.get(self.metric), result.get("training_iteration")
        if not isinstance(value, (int, float)) or step is None:
            return
        frozen = self._frozen(ot_trial)
        if frozen.state.is_finished() or int(step) in frozen.intermediate_values:
            return
        ot_trial.report(float(value), int(step))

    def _frozen(self, ot_trial):
        """The trial as the storage holds it now (the journal may be ahead of a restored searcher)."""
        return ray_private.optuna_study(self)._storage.get_trial(ot_trial._trial_id)  # Optuna's own private API

    # -- resume ------------------------------------------------------------------------------------------
    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved searcher state, then the journal: trials asked for after that state was saved (the
        study was killed before Tune could record them) stay RUNNING in the journal, and are marked FAIL."""
        super().restore(checkpoint_path)
        trials = ray_private.optuna_trials(self)
        for trial_id in trials:
            self._mark(trial_id)  # a trial asked for before the stop may get its MLflow run only now
        known = {ot_trial._trial_id for ot_trial in trials.values()}
        study = ray_private.optuna_study(self)
        storage = study._storage
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen._trial_id not in known:
                storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)


# ---------------------------------------------------------------------------------------------------
# Reading the study back (driver, after the trials)


def load_optuna_study(path: Path, study_name: str) -> optuna.Study | None:
    """The study stored in the journal at `path`, or None when there is no such file or study."""
    if not path.is_file():
        return None
    storage = JournalStorage(JournalFileBackend(str(path)))
    if study_name not in [s.study_name for s in storage.get_all_studies()]:
        return None
    return optuna.load_study(study_name=study_name, storage=storage)


def param_importances(study: optuna.Study, seed: int = 0) -> dict[str, float] | None:
    """fANOVA importances of the searched parameters over the COMPLETE trials (Optuna's default evaluator),
    largest first; None with fewer than MIN_TRIALS_FOR_IMPORTANCE of them or fewer than two parameters."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = {name for trial in complete for name in trial.params}
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE or len(names) < 2:
        return None
    importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    return {name: float(value) for name, value in importances.items()}
