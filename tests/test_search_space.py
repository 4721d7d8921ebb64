"""Search space files: the shipped spaces load and start from the authors' values; every mistake
a person can make in a file is reported with the file, the dotted key and what was expected."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from msdn.config import DATASETS, FIELD_FACTS, TrainConfig, default_config
from msdn.metrics import EvalGrid
from msdn.study.search_space import SearchSpaceError, load_search_space

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SEARCHED_AT_LEAST = {"lambda_dis", "lambda_cal", "lr", "lr_v_factor", "weight_decay"}


def base_space() -> dict:
    """A small valid search space, mutated by the tests below."""
    return {
        "metric": "H",
        "mode": "max",
        "asha": {"max_t": 30, "grace_period": 5, "reduction_factor": 3},
        "searcher": {"seed": 0, "start_from_defaults": True, "points_to_evaluate": []},
        "fixed": {"batch_size": 50},
        "params": {
            "lambda_dis": {"distribution": "loguniform", "low": 1e-5, "high": 1e-1},
            "lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-3},
            "alpha": {"distribution": "uniform", "low": 0.5, "high": 1.0},
            "momentum": {"distribution": "choice", "values": [0.0, 0.9]},
        },
    }


def write(tmp_path: Path, space: dict | str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(space if isinstance(space, str) else yaml.safe_dump(space, sort_keys=False))
    return path


def assert_error(path: Path, *fragments: str, dataset: str | None = "cub") -> str:
    """Loading `path` fails with a SearchSpaceError that names the file and contains `fragments`."""
    with pytest.raises(SearchSpaceError) as info:
        load_search_space(path, dataset=dataset)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    return message


# --- the shipped files ------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_space_loads_and_builds_tune_space(dataset):
    from ray.tune.search.sample import Domain

    space = load_search_space(SPACES / f"{dataset}.yaml", dataset=dataset)
    assert (space.dataset, space.metric, space.mode) == (dataset, "H_grid", "max")
    assert SEARCHED_AT_LEAST <= set(space.param_names)
    # only training hyperparameters are searched: alpha and gamma come from the settings grid
    assert not {"alpha", "gamma"} & set(space.param_names)
    grid = space.eval_grid()
    assert default_config(dataset).alpha in grid.alphas and default_config(dataset).gamma in grid.gammas
    tune_space = space.tune_param_space()
    assert set(tune_space) == set(space.param_names)
    assert all(isinstance(domain, Domain) for domain in tune_space.values())
    assert space.asha.grace_period <= space.asha.max_t


@pytest.mark.parametrize("dataset", DATASETS)
def test_initial_point_is_the_authors_configuration(dataset):
    space = load_search_space(SPACES / f"{dataset}.yaml", dataset=dataset)
    authors = default_config(dataset)
    (point,) = space.initial_points(dataset)
    assert point == {name: getattr(authors, name) for name in space.param_names}


def test_initial_points_spot_check_the_published_values():
    assert load_search_space(SPACES / "awa2.yaml").initial_points("awa2")[0]["lambda_dis"] == 1e-7
    assert load_search_space(SPACES / "awa2.yaml").initial_points("awa2")[0]["momentum"] == 0.0
    assert load_search_space(SPACES / "sun.yaml").initial_points("sun")[0]["lambda_cal"] == 1e-4
    assert load_search_space(SPACES / "cub.yaml").initial_points("cub")[0]["momentum"] == 0.9


def test_shipped_asha_settings():
    asha = {d: load_search_space(SPACES / f"{d}.yaml").asha for d in DATASETS}
    assert [asha[d].max_t for d in ("cub", "sun", "awa2")] == [30, 70, 50]
    assert (asha["synthetic"].max_t, asha["synthetic"].grace_period, asha["synthetic"].reduction_factor) == (8, 2, 2)


def test_optuna_searcher_accepts_space_and_starting_points():
    """The Tune space and the starting points are what Ray's OptunaSearch consumes: the first
    suggestion must be the authors' configuration (at the edge of a range for AWA2's alpha = 1)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_search_space(SPACES / "awa2.yaml", dataset="awa2")
    searcher = OptunaSearch(space=space.tune_param_space(), metric=space.metric, mode=space.mode,
                            points_to_evaluate=space.initial_points("awa2"),
                            sampler=optuna.samplers.TPESampler(seed=space.sampler_seed))
    assert searcher.suggest("t0") == space.initial_points("awa2")[0]
    sampled = searcher.suggest("t1")
    assert 1e-9 <= sampled["lambda_dis"] <= 1e-3 and sampled["momentum"] in (0.0, 0.9)


# --- the format -------------------------------------------------------------------------------------

def test_tune_domains_match_the_distributions(tmp_path):
    from ray.tune.search.sample import Categorical, Integer, LogUniform

    space = base_space()
    space["params"]["seed"] = {"distribution": "int", "low": 1, "high": 10}
    space["params"]["batch_size"] = {"distribution": "logint", "low": 16, "high": 128}
    space["fixed"] = {}
    tune_space = load_search_space(write(tmp_path, space)).tune_param_space()
    assert (tune_space["lr"].lower, tune_space["lr"].upper) == (1e-5, 1e-3)
    assert isinstance(tune_space["lr"].get_sampler(), LogUniform)
    assert isinstance(tune_space["seed"], Integer) and tune_space["seed"].upper == 11  # high inclusive
    assert tune_space["batch_size"].upper == 129 and isinstance(tune_space["batch_size"].get_sampler(), LogUniform)
    assert isinstance(tune_space["momentum"], Categorical) and tune_space["momentum"].categories == [0.0, 0.9]


def test_fixed_and_searcher_settings_are_read(tmp_path):
    space = base_space()
    space["fixed"] = {"batch_size": "64", "balanced_batches": "yes"}
    space["searcher"] = {"seed": 7, "points_to_evaluate": [{"lr": "3.0e-4", "momentum": 0}]}
    loaded = load_search_space(write(tmp_path, space))
    assert loaded.fixed == {"batch_size": 64, "balanced_batches": True}
    assert loaded.sampler_seed == 7 and loaded.start_from_defaults
    points = loaded.initial_points("sun")
    assert points[0] == {"lambda_dis": 1e-2, "lr": 1e-4, "alpha": 0.7, "momentum": 0.9}
    assert points[1] == {"lr": 3e-4, "momentum": 0.0}


def test_without_start_from_defaults_only_explicit_points(tmp_path):
    space = base_space()
    space["params"]["lambda_dis"] = {"distribution": "loguniform", "low": 1e-2, "high": 1e-1}
    space["searcher"] = {"start_from_defaults": False, "points_to_evaluate": [{"lambda_dis": 0.05}]}
    loaded = load_search_space(write(tmp_path, space), dataset="awa2")  # AWA2's 1e-7 is out of range: fine
    assert loaded.initial_points("awa2") == [{"lambda_dis": 0.05}]


def test_int_distribution_on_a_float_field_is_allowed(tmp_path):
    space = base_space()
    space["params"]["gamma"] = {"distribution": "int", "low": 0, "high": 4}
    loaded = load_search_space(write(tmp_path, space), dataset="cub")
    assert loaded.initial_points("cub")[0]["gamma"] == 2


def test_numeric_text_bounds_are_accepted(tmp_path):
    # YAML 1.1 reads 1e-5 (no dot) as a string; people write it that way anyway.
    path = write(tmp_path, "metric: H\nmode: max\nasha: {max_t: 4, grace_period: 1, reduction_factor: 2}\n"
                           "params:\n  lr: {distribution: loguniform, low: 1e-5, high: 1e-3}\n")
    assert load_search_space(path).params[0].low == 1e-5


# --- validation -------------------------------------------------------------------------------------

def test_not_yaml(tmp_path):
    assert_error(write(tmp_path, "metric: [H\nparams: {"), "not valid YAML", "expected a YAML mapping")


def test_not_a_mapping(tmp_path):
    assert_error(write(tmp_path, "- metric\n- H\n"), "found a list", "expected a mapping with the keys")


def test_missing_file(tmp_path):
    assert_error(tmp_path / "absent.yaml", "does not exist")


def test_unknown_top_level_key(tmp_path):
    space = base_space()
    space["parms"] = space.pop("params")
    assert_error(write(tmp_path, space), "parms is not a known key", "expected one of", "did you mean params?")


@pytest.mark.parametrize("key", ["metric", "mode", "asha", "params"])
def test_missing_required_key(tmp_path, key):
    space = base_space()
    del space[key]
    assert_error(write(tmp_path, space), f"{key} is missing", "expected the keys metric, mode, asha, params")


def test_unknown_metric(tmp_path):
    space = base_space()
    space["metric"] = "harmonic"
    assert_error(write(tmp_path, space), "metric = 'harmonic'", "expected one of H, S, U, zsl_acc")


def test_mode_not_max_or_min(tmp_path):
    space = base_space()
    space["mode"] = "maximize"
    assert_error(write(tmp_path, space), "mode = 'maximize'", "expected max or min")


def test_mode_against_the_metric(tmp_path):
    space = base_space()
    space["metric"], space["mode"] = "loss", "max"
    assert_error(write(tmp_path, space), "mode = 'max'", "expected mode: min")


def test_unknown_distribution(tmp_path):
    space = base_space()
    space["params"]["lr"]["distribution"] = "log-uniform"
    assert_error(write(tmp_path, space), "params.lr.distribution = 'log-uniform'",
                 "expected one of loguniform, uniform, int, logint, choice", "did you mean loguniform?")


def test_low_greater_than_high(tmp_path):
    space = base_space()
    space["params"]["lr"].update(low=0.01, high=0.001)
    path = write(tmp_path, space)
    message = assert_error(path)
    assert message == (f"search space {path}: params.lr.low = 0.01 is greater than params.lr.high = 0.001; "
                       f"expected low <= high")


def test_low_equal_to_high_for_continuous(tmp_path):
    space = base_space()
    space["params"]["alpha"].update(low=0.9, high=0.9)
    assert_error(write(tmp_path, space), "params.alpha.low = params.alpha.high = 0.9", "expected low < high")


@pytest.mark.parametrize("distribution, low", [("loguniform", 0.0), ("loguniform", -1e-3), ("logint", 0)])
def test_log_distribution_needs_positive_low(tmp_path, distribution, low):
    space = base_space()
    name = "lr" if distribution == "loguniform" else "batch_size"
    space["params"][name] = {"distribution": distribution, "low": low, "high": 1e-3 if name == "lr" else 64}
    space["fixed"] = {}
    assert_error(write(tmp_path, space), f"params.{name}.low = {low}", "expected low > 0")


@pytest.mark.parametrize("bound", ["small", True, None, [1]])
def test_non_numeric_bound(tmp_path, bound):
    space = base_space()
    space["params"]["lr"]["high"] = bound
    assert_error(write(tmp_path, space), "params.lr.high", "is not a number", "expected a finite number")


def test_missing_bound(tmp_path):
    space = base_space()
    del space["params"]["lr"]["low"]
    assert_error(write(tmp_path, space), "params.lr.low is missing", "expected a number")


@pytest.mark.parametrize("values", [None, [], "0.9"])
def test_choice_without_values(tmp_path, values):
    space = base_space()
    space["params"]["momentum"] = {"distribution": "choice"}
    if values is not None:
        space["params"]["momentum"]["values"] = values
    assert_error(write(tmp_path, space), "params.momentum.values", "expected a non-empty list")


def test_choice_with_bounds(tmp_path):
    space = base_space()
    space["params"]["momentum"]["low"] = 0.0
    assert_error(write(tmp_path, space), "params.momentum.low is given for a choice", "expected values only")


def test_values_for_a_continuous_distribution(tmp_path):
    space = base_space()
    space["params"]["lr"]["values"] = [1e-4]
    assert_error(write(tmp_path, space), "params.lr.values is given", "expected low and high only")


def test_unknown_key_inside_a_param(tmp_path):
    space = base_space()
    space["params"]["lr"]["step"] = 1e-5
    assert_error(write(tmp_path, space), "params.lr.step is not a known key",
                 "expected one of distribution, low, high, values")


def test_param_the_trainer_does_not_know(tmp_path):
    space = base_space()
    space["params"]["learning_rate"] = space["params"].pop("lr")
    assert_error(write(tmp_path, space), "params.learning_rate is not a training configuration field",
                 "expected a field of msdn.config.TrainConfig")


@pytest.mark.parametrize("name", ["dataset", "data_root", "protocol", "device", "val_seed", "val_fraction",
                                  "epochs", "eval_batch_size", "gamma_min", "gamma_max", "gamma_steps"])
def test_param_that_must_not_be_searched(tmp_path, name):
    space = base_space()
    space["params"][name] = {"distribution": "choice", "values": [1, 2]}
    message = assert_error(write(tmp_path, space), f"params.{name} cannot be searched", "expected it removed")
    if name == "epochs":
        assert "asha.max_t" in message


def test_float_distribution_on_an_int_field(tmp_path):
    space = base_space()
    space["fixed"] = {}
    space["params"]["batch_size"] = {"distribution": "uniform", "low": 16, "high": 64}
    assert_error(write(tmp_path, space), "params.batch_size.distribution = uniform", "integer field",
                 "expected int, logint or choice")


def test_fractional_bound_for_int_distribution(tmp_path):
    space = base_space()
    space["fixed"] = {}
    space["params"]["batch_size"] = {"distribution": "int", "low": 16.5, "high": 64}
    assert_error(write(tmp_path, space), "params.batch_size.low = 16.5 is not an integer", "expected an integer")


def test_choice_values_of_the_wrong_type(tmp_path):
    space = base_space()
    space["fixed"] = {}
    space["params"]["batch_size"] = {"distribution": "choice", "values": [32, "big"]}
    assert_error(write(tmp_path, space), "params.batch_size.values[1] = 'big'", "expected int")


def test_range_the_trainer_rejects(tmp_path):
    space = base_space()
    space["params"]["alpha"]["high"] = 1.5
    assert_error(write(tmp_path, space), "params.alpha.high = 1.5 is rejected by the trainer",
                 "expected a weight in [0, 1]")


def test_param_both_fixed_and_searched(tmp_path):
    space = base_space()
    space["fixed"]["lr"] = 1e-4
    assert_error(write(tmp_path, space), "params.lr is searched but also fixed (fixed.lr = 0.0001)",
                 "expected a field to be either fixed or searched")


@pytest.mark.parametrize("fixed, fragments", [
    ({"learning_rate": 1e-4}, ("fixed.learning_rate is not a training configuration field",)),
    ({"epochs": 10}, ("fixed.epochs cannot be set", "asha.max_t")),
    ({"batch_size": "fifty"}, ("fixed.batch_size = 'fifty' has the wrong type", "expected int")),
    ({"batch_size": 0}, ("fixed = {'batch_size': 0} is rejected", "expected >= 1")),
])
def test_invalid_fixed(tmp_path, fixed, fragments):
    space = base_space()
    space["fixed"] = fixed
    assert_error(write(tmp_path, space), *fragments)


@pytest.mark.parametrize("asha, fragments", [
    ({"max_t": 0, "grace_period": 1, "reduction_factor": 3}, ("asha.max_t = 0", "expected at least 1")),
    ({"max_t": 2.5, "grace_period": 1, "reduction_factor": 3}, ("asha.max_t = 2.5", "expected an integer")),
    ({"max_t": 10, "grace_period": 0, "reduction_factor": 3}, ("asha.grace_period = 0", "expected 1 <= grace_period <= max_t")),
    ({"max_t": 10, "grace_period": 11, "reduction_factor": 3}, ("asha.grace_period = 11", "expected 1 <= grace_period <= max_t")),
    ({"max_t": 10, "grace_period": 2, "reduction_factor": 1}, ("asha.reduction_factor = 1", "expected a number greater than 1")),
    ({"max_t": 10, "grace_period": 2}, ("asha.reduction_factor is missing", "expected the keys max_t, grace_period")),
    ({"max_t": 10, "grace_period": 2, "reduction_factor": 3, "brackets": 1}, ("asha.brackets is not a known key",)),
])
def test_invalid_asha(tmp_path, asha, fragments):
    space = base_space()
    space["asha"] = asha
    assert_error(write(tmp_path, space), *fragments)


@pytest.mark.parametrize("point, fragments", [
    ({"learning_rate": 1e-4}, ("searcher.points_to_evaluate[0].learning_rate is not a searched parameter",
                               "expected one of lambda_dis, lr, alpha, momentum")),
    ({"lr": 0.5}, ("searcher.points_to_evaluate[0].lr = 0.5 is outside [1e-05, 0.001]",
                   "expected a value allowed by params.lr (loguniform in [1e-05, 0.001])")),
    ({"momentum": 0.5}, ("searcher.points_to_evaluate[0].momentum = 0.5 is not one of [0.0, 0.9]",)),
    ({"alpha": "high"}, ("searcher.points_to_evaluate[0].alpha = 'high' is not a number",)),
    ({}, ("searcher.points_to_evaluate[0] = {}", "expected a non-empty mapping")),
])
def test_invalid_starting_point(tmp_path, point, fragments):
    space = base_space()
    space["searcher"]["points_to_evaluate"] = [point]
    assert_error(write(tmp_path, space), *fragments)


def test_authors_value_outside_the_range(tmp_path):
    space = base_space()  # lambda_dis in [1e-5, 0.1]; the authors use 1e-7 on AWA2
    message = assert_error(write(tmp_path, space, "awa2.yaml"), "searcher.start_from_defaults is true",
                           "authors' awa2 value lambda_dis = 1e-07", "params.lambda_dis",
                           "widen params.lambda_dis to include 1e-07", dataset="awa2")
    assert "start_from_defaults: false" in message


def test_authors_value_checked_when_dataset_only_given_later(tmp_path):
    space = load_search_space(write(tmp_path, base_space()))  # no dataset known yet: nothing to check
    with pytest.raises(SearchSpaceError, match="lambda_dis = 1e-07"):
        space.initial_points("awa2")


def test_dataset_mismatch(tmp_path):
    space = base_space()
    space["dataset"] = "cub"
    assert_error(write(tmp_path, space), "dataset = 'cub' but the study runs on 'sun'",
                 "expected the search space written for sun", dataset="sun")


# --- the settings grid (eval_grid) ------------------------------------------------------------------

def test_eval_grid_values_and_the_old_way(tmp_path):
    space = base_space()  # searches alpha under params (the old way): only gamma is gridded
    space["params"].pop("alpha")
    space["eval_grid"] = {"alpha": {"low": 0.5, "high": 1.0, "step": 0.05}, "gamma": {"low": 0, "high": 3, "step": 0.5}}
    grid = load_search_space(write(tmp_path, space), dataset="cub").eval_grid()
    assert grid.alphas == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)  # rounded: 0.7, not 0.7000000001
    assert grid.gammas == (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)

    old = load_search_space(write(tmp_path, base_space(), "old.yaml"), dataset="cub")  # no eval_grid section
    assert old.eval_grid().alphas is None  # alpha searched: each trial keeps its own
    assert old.eval_grid().gammas == tuple(round(-2.0 + 0.1 * k, 10) for k in range(81))  # the default gamma grid
    both = base_space()
    both["params"]["gamma"] = {"distribution": "uniform", "low": 0.0, "high": 4.0}
    assert load_search_space(write(tmp_path, both, "both.yaml")).eval_grid() == EvalGrid(None, None)
    space["eval_grid"] = {}
    assert load_search_space(write(tmp_path, space, "none.yaml")).eval_grid() == EvalGrid(None, None)


@pytest.mark.parametrize("grid, fragments", [
    ([0.5, 1.0], ("eval_grid = [0.5, 1.0]", "expected a mapping with the keys alpha, gamma")),
    ({"alpah": {}}, ("eval_grid.alpah is not a known key", "did you mean alpha?")),
    ({"gamma": {"low": 0, "high": 4}}, ("eval_grid.gamma.step is missing",)),
    ({"gamma": {"low": 0, "high": 4, "step": 0.3}}, ("eval_grid.gamma: (high - low) / step", "not a whole number")),
    ({"gamma": {"low": 4, "high": 0, "step": 0.5}}, ("eval_grid.gamma.low = 4 is greater than",)),
    ({"gamma": {"low": 0, "high": 4, "step": 0}}, ("eval_grid.gamma.step = 0; expected a step > 0",)),
    ({"gamma": {"low": 0, "high": 4, "step": 0.001}}, ("eval_grid.gamma has 4001 values; expected at most 401",)),
    ({"gamma": {"low": 0, "high": "x", "step": 1}}, ("eval_grid.gamma.high = 'x' is not a number",)),
    ({"gamma": {"low": 0, "high": 4, "step": 1, "n": 3}}, ("eval_grid.gamma.n is not a known key",)),
    ({"gamma": {"low": 0, "high": 4, "step": 1}, "alpha": {"low": 0.0, "high": 1.5, "step": 0.5}},
     ("eval_grid.alpha is given but alpha is also searched under params.alpha",)),
])
def test_invalid_eval_grid(tmp_path, grid, fragments):
    space = base_space()
    space["eval_grid"] = grid
    assert_error(write(tmp_path, space), *fragments)


def test_eval_grid_values_the_trainer_rejects(tmp_path):
    space = base_space()
    space["params"].pop("alpha")
    space["eval_grid"] = {"alpha": {"low": 0.0, "high": 1.5, "step": 0.5}}
    assert_error(write(tmp_path, space), "eval_grid.alpha.high = 1.5 is rejected by the trainer")


def test_eval_grid_must_hold_the_authors_values(tmp_path):
    space = base_space()
    space["params"].pop("alpha")
    space["eval_grid"] = {"alpha": {"low": 0.0, "high": 0.9, "step": 0.3}}  # CUB's 0.9 is on it, SUN's 0.7 not
    path = write(tmp_path, space)
    load_search_space(path, dataset="cub")
    assert_error(path, "the authors' sun value alpha = 0.7 is not a value of the grid alpha 0 to 0.9 step 0.3",
                 "eval_grid.alpha", "or set searcher.start_from_defaults: false", dataset="sun")
    space["eval_grid"] = {"gamma": {"low": 0.0, "high": 1.0, "step": 0.5}}  # the default gamma 2.0 is not on it
    assert_error(write(tmp_path, space), "gamma = 2.0 is not a value of the grid gamma 0 to 1 step 0.5")
    space["searcher"]["start_from_defaults"] = False
    load_search_space(write(tmp_path, space), dataset="sun")


# --- every TrainConfig field, as its FieldFacts say (msdn/config.py) ---------------------------------

@pytest.mark.parametrize("name", sorted(FIELD_FACTS))
def test_every_field_is_searched_or_fixed_as_its_facts_say(tmp_path, name):
    """params: and fixed: accept exactly the fields whose FieldFacts.study allows it, and say why not."""
    default = getattr(TrainConfig(), name)
    role = FIELD_FACTS[name].study
    other = "lr" if name != "lr" else "lambda_dis"  # a searched field besides `name` (params must not be empty)
    space = base_space()
    space["searcher"]["start_from_defaults"] = False
    space["fixed"] = {}
    space["params"] = {other: {"distribution": "uniform", "low": 1e-4, "high": 1e-3}}
    searched = {**space, "params": {**space["params"], name: {"distribution": "choice", "values": [default]}}}
    if role.search:
        assert name in load_search_space(write(tmp_path, searched, "searched.yaml"), dataset=None).param_names
    else:
        assert_error(write(tmp_path, searched, "searched.yaml"), f"params.{name} cannot be searched: {role.why}",
                     dataset=None)
    fixed = {**space, "fixed": {name: default}}
    if role.fix:
        assert load_search_space(write(tmp_path, fixed, "fixed.yaml"), dataset=None).fixed == {name: default}
    else:
        assert_error(write(tmp_path, fixed, "fixed.yaml"), f"fixed.{name} cannot be set in a search space: {role.why}",
                     dataset=None)
