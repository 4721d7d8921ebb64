"""--warm-start with real Optuna journals: the earlier trials enter as evidence for the same benchmark (COMPLETE and
PRUNED as they were, marked, never run again), the earlier best are tried first for another benchmark (marked, and
so is their MLflow run), and a path that is no study's folder is refused before Ray starts, changing nothing."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from msdn.study.options import JOURNAL_FILE, StudyError, StudyRequest, resolve_options
from msdn.study.search_space import load_search_space
from msdn.study.searcher import StudySearcher, load_optuna_study
from msdn.study.warm_start import (BEST_POINTS, WARM_START_ATTR, WarmStartError, clipped, comparable, within,
                                   load_earlier_study, study_facts, trial_tags)

REPO = Path(__file__).resolve().parents[1]
SPACE = load_search_space(REPO / "search_spaces" / "synthetic.yaml", "synthetic")
MAX_EPOCHS = 4
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def other_root(tmp_path_factory) -> Path:
    """A second synthetic benchmark: the generator's seed 1 (other classes, attributes and images)."""
    from msdn.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic_seed1")
    ensure_synthetic(root, seed=1, progress=None)
    return root


def searcher(journal: Path, data_root: Path, space=SPACE, warm_start: Path | None = None) -> StudySearcher:
    """The searcher as runner.build_tuner makes it, set up the way Tune does (set_search_properties)."""
    s = StudySearcher(starting_points=space.initial_points("synthetic"), seed=0, max_epochs=MAX_EPOCHS,
                      journal=journal, study_name=journal.parent.name, num_samples=12, warm_start=warm_start,
                      facts=study_facts("synthetic", data_root, space, MAX_EPOCHS))
    s.set_search_properties(space.metric, space.mode, space.tune_param_space())
    return s


def run(s: StudySearcher, trial_id: str, values: list[float], *, error: bool = False) -> dict:
    """A trial as Tune drives the searcher (fewer than MAX_EPOCHS values: ASHA stopped it); its parameters."""
    config = s.suggest(trial_id)
    for epoch, value in enumerate(values[:-1], 1):
        s.on_trial_result(trial_id, {"training_iteration": epoch, SPACE.metric: value})
    s.on_trial_complete(trial_id, result={"training_iteration": len(values), SPACE.metric: values[-1]}, error=error)
    return config


def earlier_study(folder: Path, data_root: Path) -> list[dict]:
    """A small finished study: the authors' point, three sampled trials (one stopped early) and an errored one."""
    s = searcher(folder / JOURNAL_FILE, data_root)
    return [run(s, "a", [0.30, 0.40, 0.55, 0.50]), run(s, "b", [0.20, 0.25]), run(s, "c", [0.5, 0.6, 0.7, 0.65]),
            run(s, "d", [0.1], error=True), run(s, "e", [0.35, 0.45])]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_benchmark_the_earlier_trials_are_evidence_and_never_run(tmp_path, synthetic_root):
    earlier = tmp_path / "results" / "msdn-earlier"
    configs = earlier_study(earlier, synthetic_root)
    before = files(earlier)
    new = tmp_path / "results" / "msdn-new"
    s = searcher(new / JOURNAL_FILE, synthetic_root, warm_start=earlier)
    assert files(earlier) == before  # read from a copy: no byte, lock or file added

    trials = sorted(load_optuna_study(new / JOURNAL_FILE, "msdn-new").get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                                         TrialState.PRUNED]  # the errored trial is no evidence
    assert [t.params for t in trials] == [configs[i] for i in (0, 1, 2, 4)]
    assert [t.value for t in trials] == [0.55, 0.25, 0.7, 0.45]
    assert trials[0].intermediate_values == {1: 0.30, 2: 0.40, 3: 0.55, 4: 0.50}
    assert trials[1].intermediate_values == {1: 0.20, 2: 0.25}
    assert {t.user_attrs[WARM_START_ATTR] for t in trials} == {str(earlier.resolve())}
    assert (s.warm_started.evidence, s.warm_started.left_out, s.warm_started.enqueued) == (4, 0, ())

    # The first new trial is TPE's (4 finished trials: past the start-up): not the authors' point again, unmarked.
    proposed = s.suggest("new-1")
    assert proposed != configs[0] and not any(proposed == c for c in configs)
    assert trial_tags("new-1") == {}
    latest = load_optuna_study(new / JOURNAL_FILE, "msdn-new").get_trials()[-1]
    assert latest.number == 4 and latest.state == TrialState.RUNNING and WARM_START_ATTR not in latest.user_attrs


def test_same_benchmark_trials_outside_the_new_ranges_are_left_out(tmp_path, synthetic_root):
    earlier = tmp_path / "msdn-earlier"
    configs = earlier_study(earlier, synthetic_root)
    cut = sorted(c["lr"] for c in configs)[2]  # the new lr range keeps the trials with the lowest lr
    params = tuple(dataclasses.replace(p, high=cut) if p.name == "lr" else p for p in SPACE.params)
    narrow = dataclasses.replace(SPACE, params=params, start_from_defaults=False)
    s = searcher(tmp_path / "msdn-new" / JOURNAL_FILE, synthetic_root, space=narrow, warm_start=earlier)
    kept = s._ot_study.get_trials()
    assert kept and all(t.params["lr"] <= cut for t in kept)
    finished = [c for i, c in enumerate(configs) if i != 3]  # the errored trial "d" was never evidence
    assert len(kept) == sum(c["lr"] <= cut for c in finished) == s.warm_started.evidence
    assert s.warm_started.left_out == len(finished) - len(kept)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_another_benchmark_the_earlier_best_are_tried_first_and_marked(tmp_path, synthetic_root, other_root):
    earlier = tmp_path / "msdn-other"
    configs = earlier_study(earlier, other_root)  # on the second synthetic benchmark
    s = searcher(tmp_path / "msdn-new" / JOURNAL_FILE, synthetic_root, warm_start=earlier)
    assert s._ot_study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)) == []  # no evidence
    proposed = [s.suggest(f"t{i}") for i in range(BEST_POINTS + 1)]
    # c (COMPLETE 0.7), a (COMPLETE 0.55), then the pruned ones by depth and value: e (2 epochs, 0.45) before b
    assert proposed[:BEST_POINTS] == [configs[2], configs[0], configs[4]]
    assert [trial_tags(f"t{i}") for i in range(BEST_POINTS)] == [{WARM_START_ATTR: str(earlier.resolve())}] * 3
    # then the search space's own starting point (the authors' configuration), unmarked
    assert proposed[BEST_POINTS] == SPACE.initial_points("synthetic")[0] and trial_tags(f"t{BEST_POINTS}") == {}
    trials = sorted(s._ot_study.get_trials(), key=lambda t: t.number)
    assert [t.user_attrs.get(WARM_START_ATTR) for t in trials] == [str(earlier.resolve())] * 3 + [None]


def test_facts_compare_benchmark_and_search_space(synthetic_root, other_root):
    facts = study_facts("synthetic", synthetic_root, SPACE, 8)
    names = {"params": {p: {} for p in SPACE.param_names}}
    assert comparable({**facts, **names}, {**facts, **names})
    assert not comparable({**study_facts("synthetic", other_root, SPACE, 8), **names}, {**facts, **names})
    assert not comparable({**facts, "max_epochs": 4, **names}, {**facts, **names})
    assert not comparable({**facts, "params": {"lr": {}}}, {**facts, **names})
    assert not comparable(None, {**facts, **names})  # a study from before the facts were recorded


def test_a_point_is_clipped_to_the_new_ranges():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {"lr": FloatDistribution(1e-4, 1e-3, log=True), "batch_size": IntDistribution(16, 64, step=8),
             "momentum": CategoricalDistribution([0.0, 0.9])}
    assert clipped({"lr": 5e-3, "batch_size": 70, "momentum": 0.5, "other": 1}, space) == {"lr": 1e-3,
                                                                                           "batch_size": 64}
    assert clipped({"lr": 1e-5, "batch_size": 21, "momentum": 0.9}, space) == {"lr": 1e-4, "batch_size": 24,
                                                                               "momentum": 0.9}


def test_a_point_is_within_the_new_ranges_only_on_their_steps_and_choices():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {"lr": FloatDistribution(1e-5, 1e-3, log=True), "batch": IntDistribution(32, 128, step=32),
             "m": FloatDistribution(0.0, 1.0, step=0.25), "opt": CategoricalDistribution(["sgd", "adam"])}
    inside = {"lr": 1e-4, "batch": 64, "m": 0.75, "opt": "adam"}
    assert within(inside, space)
    for name, value in [("lr", 2e-3), ("batch", 48), ("batch", 64.5), ("m", 0.3), ("opt", "rmsprop"),
                        ("lr", float("nan")), ("lr", "1e-4"), ("batch", True)]:
        assert not within({**inside, name: value}, space), (name, value)
    assert not within({k: v for k, v in inside.items() if k != "m"}, space)  # a searched parameter missing
    assert not within({**inside, "extra": 1}, space)  # one the new space does not search


def test_not_a_study_folder_is_refused_naming_the_flag(tmp_path, synthetic_root):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / JOURNAL_FILE).write_text("not a journal\n")
    for name, found in (("missing", "does not exist"), ("file", "is not a folder"),
                        ("empty", f"no {JOURNAL_FILE} in it"), ("bad", ".*holds no Optuna study")):
        with pytest.raises(WarmStartError, match=f"^--warm-start {tmp_path / name}: {found}"):
            load_earlier_study(tmp_path / name, JOURNAL_FILE)
        request = StudyRequest(dataset="synthetic", data_root=str(synthetic_root), warm_start=tmp_path / name,
                               storage_path=str(tmp_path / "results"), mlflow_uri=f"sqlite:///{tmp_path}/m.db")
        with pytest.raises(StudyError, match=f"^--warm-start {tmp_path / name}: {found}"):
            resolve_options(request)
    assert (tmp_path / "bad" / JOURNAL_FILE).read_text() == "not a journal\n"  # bad input changes nothing
    assert not (tmp_path / "results").exists()


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_tune_run_exits_2_naming_warm_start_before_ray(tmp_path, synthetic_root):
    done = subprocess.run([sys.executable, str(REPO / "tune" / "run.py"), "--dataset", "synthetic", "--data-root",
                           str(synthetic_root), "--warm-start", str(tmp_path / "nowhere"), "--storage-path",
                           str(tmp_path / "results"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --warm-start {tmp_path / 'nowhere'}: does not exist; expected the result "
                                  "folder of an earlier study"), done.stderr
    assert "Traceback" not in done.stderr and "Ray" not in done.stdout + done.stderr


@pytest.mark.slow
def test_a_study_warm_started_from_another_benchmark_runs_its_best_first_and_tags_their_runs(tmp_path, synthetic_root,
                                                                                             other_root):
    """Two short studies through tune/run.py: the second, on another benchmark, starts from the first's folder."""
    from mlflow.tracking import MlflowClient

    from msdn.study.tracking.store import STUDY_TAG

    def study(root: Path, experiment: str, samples: int, *extra: str) -> None:
        done = subprocess.run([sys.executable, str(REPO / "tune" / "run.py"), "--dataset", "synthetic", "--data-root",
                               str(root), "--num-samples", str(samples), "--max-epochs", "2", "--no-refit",
                               "--experiment", experiment, *extra], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    study(other_root, "msdn-source", 3)
    source = tmp_path / "results" / "msdn-source"
    before = files(source)
    earlier = load_earlier_study(source, JOURNAL_FILE)
    study(synthetic_root, "msdn-warm", 4, "--warm-start", str(source))
    assert files(source) == before

    trials = sorted(load_optuna_study(tmp_path / "results" / "msdn-warm" / JOURNAL_FILE, "msdn-warm").get_trials(),
                    key=lambda t: t.number)
    assert [t.params for t in trials[:3]] == [t.params for t in earlier.ranked()]  # the earlier best, in order
    assert [t.user_attrs.get(WARM_START_ATTR) for t in trials] == [str(source.resolve())] * 3 + [None]
    assert trials[3].params == SPACE.initial_points("synthetic")[0]  # then the authors' configuration
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("msdn-warm")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(STUDY_TAG) == "trial"]
    tagged = sorted(r.data.params["lr"] for r in runs if r.data.tags.get(WARM_START_ATTR) == str(source.resolve()))
    assert len(runs) == 4 and tagged == sorted(str(t.params["lr"]) for t in trials[:3])
