"""The study's searcher with a real Optuna study: ASHA's stops become PRUNED trials, completed trials are COMPLETE
with their best epoch's value, every epoch is an intermediate value, and the journal keeps it all across a resume."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from msdn.study import ray_private
from msdn.study.options import StudyError
from msdn.study.search_space import load_search_space
from msdn.study.searcher import (JOURNAL_FILE, StudySearcher, check_journal, load_optuna_study,
                                  param_importances)

SPACE = load_search_space(Path(__file__).resolve().parents[1] / "search_spaces" / "synthetic.yaml", "synthetic")
MAX_EPOCHS = 4
optuna.logging.set_verbosity(optuna.logging.WARNING)


def searcher(journal: Path | None = None, resume: bool = False) -> StudySearcher:
    """The searcher as runner.build_tuner makes it, set up the way Tune does (set_search_properties)."""
    s = StudySearcher(starting_points=SPACE.initial_points("synthetic"), seed=0, max_epochs=MAX_EPOCHS,
                      journal=journal, resume=resume, study_name="msdn-test")
    s.set_search_properties(SPACE.metric, SPACE.mode, SPACE.tune_param_space())
    return s


def result(epoch: int, value: float) -> dict:
    return {"training_iteration": epoch, SPACE.metric: value, "H": value / 2, "curve_H": [0.1]}


def run(s: StudySearcher, trial_id: str, values: list[float], *, stopped: bool = False, error: bool = False) -> None:
    """A trial as Tune drives the searcher: results it passes on, then completion with the last result.

    When the scheduler stops a trial (ASHA, or max_t), Tune hands that last result to on_trial_complete only.
    """
    s.suggest(trial_id)
    for epoch, value in enumerate(values[:-1], 1):
        s.on_trial_result(trial_id, result(epoch, value))
    s.on_trial_complete(trial_id, result=result(len(values), values[-1]), error=error)


def by_number(study: optuna.Study) -> list:
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def test_stopped_trials_are_pruned_and_completed_trials_keep_their_best_value():
    s = searcher()
    run(s, "authors", [0.30, 0.40, 0.55, 0.50])  # ran to max_epochs, best at epoch 3
    run(s, "stopped", [0.60, 0.65], stopped=True)  # ASHA stopped it after 2 epochs
    run(s, "errored", [0.20], error=True)
    s.suggest("nan")
    s.on_trial_complete("nan", result=result(1, math.nan))
    s.on_trial_complete("authors", result=result(4, 0.50))  # a repeated completion changes nothing
    s.on_trial_result("stopped", result(3, 0.99))  # nor a late result of a finished trial

    authors, stopped, errored, nan = by_number(ray_private.optuna_study(s))
    assert authors.params == SPACE.initial_points("synthetic")[0]  # the starting point is the first trial
    assert (authors.state, authors.value) == (TrialState.COMPLETE, 0.55)  # its best epoch, not its last
    assert authors.intermediate_values == {1: 0.30, 2: 0.40, 3: 0.55, 4: 0.50}
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {1: 0.60, 2: 0.65}
    assert stopped.value == 0.65  # Optuna records a pruned trial's last intermediate value
    assert errored.state == nan.state == TrialState.FAIL


def test_resumed_epochs_are_reported_once():
    s = searcher()
    s.suggest("t")
    for epoch, value in ((1, 0.3), (2, 0.4), (2, 0.41), (1, 0.31), (3, 0.5)):  # a restart repeats epochs 1-2
        s.on_trial_result("t", result(epoch, value))
    assert by_number(ray_private.optuna_study(s))[0].intermediate_values == {1: 0.3, 2: 0.4, 3: 0.5}


def test_tpe_ranks_a_pruned_trial_below_every_completed_one():
    """What the one-line comment in searcher.py relies on (Optuna 5's TPE, `_split_trials`): a trial stopped early
    at a high value does not count as better than a finished one, as a low-fidelity COMPLETE value would."""
    from optuna.samplers._tpe.sampler import _split_trials

    s = searcher()
    run(s, "finished", [0.2, 0.3, 0.35, 0.4])
    run(s, "stopped", [0.7, 0.8], stopped=True)
    study = ray_private.optuna_study(s)
    below, above = _split_trials(study, study.get_trials(deepcopy=False), n_below=1)
    assert [t.number for t in below] == [0] and [t.number for t in above] == [1]


def test_journal_keeps_the_study_through_a_kill_and_a_resume(tmp_path):
    journal = tmp_path / "exp" / JOURNAL_FILE
    s = StudySearcher(starting_points=SPACE.initial_points("synthetic"), seed=0, max_epochs=MAX_EPOCHS,
                      journal=journal, study_name="msdn-test")
    tuner_pkl = pickle.dumps(s)  # Tune pickles the searcher with the Tuner before setting it up
    s.set_search_properties(SPACE.metric, SPACE.mode, SPACE.tune_param_space())
    run(s, "a", [0.3, 0.4, 0.5, 0.45])
    run(s, "b", [0.2, 0.25], stopped=True)
    s.suggest("c")
    s.on_trial_result("c", result(1, 0.33))
    saved = tmp_path / "searcher-state.pkl"
    s.save(str(saved))  # Tune's last experiment snapshot
    run(s, "c", [0.33, 0.36], stopped=True)  # pruned after the snapshot, before the kill
    s.suggest("d")  # asked for after the snapshot: Tune never recorded it

    with pytest.raises(StudyError, match="exists, from an earlier study"):
        searcher(journal)  # a new study must not continue another's journal
    restored = pickle.loads(tuner_pkl)  # --resume: the Tuner's searcher, set up again, then its saved state
    restored.set_search_properties(SPACE.metric, SPACE.mode, SPACE.tune_param_space())
    restored.restore(str(saved))
    a, b, c, d = by_number(load_optuna_study(journal, "msdn-test"))  # no starting point enqueued twice
    assert (a.state, a.value, b.state) == (TrialState.COMPLETE, 0.5, TrialState.PRUNED)
    assert c.state == TrialState.PRUNED and c.intermediate_values == {1: 0.33, 2: 0.36}  # the journal is ahead
    assert d.state == TrialState.FAIL  # the orphan of the kill, no longer RUNNING
    restored.on_trial_result("c", result(2, 0.9))  # Tune re-runs c from its checkpoint: c stays as told
    restored.on_trial_complete("c", result=result(4, 0.9))
    run(restored, "e", [0.4, 0.5, 0.6, 0.7])
    trials = by_number(load_optuna_study(journal, "msdn-test"))
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED, TrialState.FAIL,
                                         TrialState.COMPLETE]
    assert trials[2].value == 0.36 and trials[4].value == 0.7
    assert trials[4].params != trials[0].params  # sampled, not the authors' point again
    assert load_optuna_study(journal, "msdn-test").metric_names == [SPACE.metric]  # optuna-dashboard's objective name

    journal.unlink()
    with pytest.raises(StudyError, match="Optuna journal .* is missing"):
        check_journal(journal, resume=True)


def test_importances_need_enough_completed_trials(tmp_path):
    journal = tmp_path / JOURNAL_FILE
    s = searcher(journal)
    run(s, "t0", [0.1, 0.2, 0.3, 0.4])
    for i in range(1, 4):
        run(s, f"p{i}", [0.1, 0.1], stopped=True)
    assert param_importances(load_optuna_study(journal, "msdn-test")) is None  # one COMPLETE trial
    for i in range(1, 6):
        run(s, f"t{i}", [0.1, 0.2, 0.3, 0.1 * i])
    importances = param_importances(load_optuna_study(journal, "msdn-test"))
    assert set(importances) == set(SPACE.param_names)
    assert sum(importances.values()) == pytest.approx(1.0)
    assert list(importances.values()) == sorted(importances.values(), reverse=True)
    assert load_optuna_study(journal, "another-name") is None and load_optuna_study(tmp_path / "none", "x") is None


def test_importances_reach_the_parent_run_as_metrics_and_a_plot(tmp_path):
    """conclude._importances: the persisted study's importances queued as `importance.<param>`, plus a bar plot."""
    from types import SimpleNamespace

    from msdn.study.conclude import _importances
    from msdn.study.options import StudyRequest, with_defaults
    from msdn.study.outcome import StudyOutcome
    from msdn.study.tracking.parent import ParentRun

    s = searcher(tmp_path / "exp" / JOURNAL_FILE)
    for i in range(6):
        run(s, f"t{i}", [0.1, 0.2, 0.3, 0.1 + 0.05 * i])
    queued, logged, said = [], [], []
    parent = ParentRun(SimpleNamespace(submit=lambda what, fn: queued.append(fn)), "1", "parent-run")
    client = SimpleNamespace(log_batch=lambda run_id, metrics: logged.extend((m.key, m.value) for m in metrics))
    opts = with_defaults(StudyRequest(dataset="synthetic", search_space=SPACE.path, experiment="msdn-test"), 4)

    def outcome(folder: str) -> StudyOutcome:
        return StudyOutcome("msdn-test", "synthetic", "val", SPACE.metric, SPACE.mode, SPACE.param_names, 6,
                            MAX_EPOCHS, str(tmp_path / folder), "sqlite:///x.db", "1", "parent-run",
                            journal=str(tmp_path / folder / JOURNAL_FILE))

    plots = _importances(opts, SPACE, outcome("exp"), parent, tmp_path, said.append)
    assert [p.name for p in plots] == ["param_importances.png"] and plots[0].stat().st_size > 0
    queued[0](client)
    assert {key for key, _ in logged} == {f"importance.{name}" for name in SPACE.param_names}
    assert said[0].startswith("parameter importances (fANOVA, COMPLETE trials): ")
    assert _importances(opts, SPACE, outcome("none"), parent, tmp_path, said.append) == [] and "not computed" in said[-1]


def test_tpe_start_up_scales_with_the_study_size():
    """The study's sampler (runner.build_tuner passes --num-samples): a quarter of the trials random, at least 4."""
    from msdn.study.searcher import TPE

    assert [TPE.startup_trials(n) for n in (1, 12, 16, 17, 40, 100)] == [4, 4, 4, 5, 10, 25]
    s = StudySearcher(starting_points=[], seed=3, max_epochs=MAX_EPOCHS, num_samples=40)
    assert isinstance(s._sampler, optuna.samplers.TPESampler) and s._sampler._n_startup_trials == 10
    assert s._sampler._multivariate and s._sampler._constant_liar and s._seed is None  # the seed went to the sampler
    first = [StudySearcher(starting_points=[], seed=3, max_epochs=MAX_EPOCHS, num_samples=12) for _ in range(2)]
    for one in first:
        one.set_search_properties(SPACE.metric, SPACE.mode, SPACE.tune_param_space())
    assert first[0].suggest("a") == first[1].suggest("a")  # seeded
    assert StudySearcher(max_epochs=MAX_EPOCHS, seed=3)._sampler is None  # without num_samples: OptunaSearch's own
