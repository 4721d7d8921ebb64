"""msdn/study/trainable.py: per-trial seeds that reproduce a study, and the trial's configuration.

These need no Ray: the trial's seed and config are plain functions of the study seed and the
values Optuna sampled.
"""
from __future__ import annotations

import pytest

from msdn.config import default_config
from msdn.study.trainable import trial_config, trial_seed

SAMPLED = {"lr": 3e-4, "lambda_dis": 0.01, "alpha": 0.8, "momentum": 0.9, "balanced_batches": True}


# ----------------------------------------------------------------------------- trial_seed
def test_same_study_seed_and_values_same_seed():
    assert trial_seed(0, dict(SAMPLED)) == trial_seed(0, dict(SAMPLED))


def test_seed_is_pinned_across_versions():
    """Resuming a study recomputes each trial's seed: a changed derivation would change its trials."""
    assert trial_seed(0, {"lr": 0.001, "momentum": 0.9}) == 324099420
    assert trial_seed(214, {}) == 1325136760


def test_independent_of_key_order():
    reordered = dict(reversed(list(SAMPLED.items())))
    assert list(reordered) != list(SAMPLED)
    assert trial_seed(7, reordered) == trial_seed(7, SAMPLED)


def test_differs_with_the_study_seed():
    seeds = {trial_seed(s, SAMPLED) for s in range(20)}
    assert len(seeds) == 20


@pytest.mark.parametrize("name, other", [
    ("lr", 3.0001e-4), ("lambda_dis", 0.02), ("alpha", 0.81), ("momentum", 0.0), ("balanced_batches", False),
])
def test_differs_with_any_sampled_value(name, other):
    assert trial_seed(0, {**SAMPLED, name: other}) != trial_seed(0, SAMPLED)


def test_differs_with_an_added_value():
    assert trial_seed(0, {**SAMPLED, "gamma": 2.0}) != trial_seed(0, SAMPLED)


def test_in_range_for_every_seeding_api():
    """torch.manual_seed and numpy accept it; [0, 2**31 - 1) also fits a signed 32-bit int."""
    for study_seed in range(50):
        for lr in (1e-5, 1e-4, 1e-3):
            seed = trial_seed(study_seed, {**SAMPLED, "lr": lr})
            assert type(seed) is int and 0 <= seed < 2**31 - 1


# ----------------------------------------------------------------------------- trial_config
def base() -> dict:
    """The study's fixed settings, as the runner passes them (a whole TrainConfig as a dict)."""
    return default_config("synthetic").replace(protocol="val", epochs=4, data_root="/data").to_dict()


def test_base_then_sampled_values_then_the_seed():
    cfg = trial_config(base(), {"lr": 3e-4, "alpha": 0.8}, seed=123)
    assert (cfg.lr, cfg.alpha, cfg.seed) == (3e-4, 0.8, 123)
    assert (cfg.protocol, cfg.epochs, cfg.data_root, cfg.lambda_cal) == ("val", 4, "/data", 0.1)  # from base


def test_the_given_seed_wins_over_base_and_sampled():
    cfg = trial_config({**base(), "seed": 1}, {"seed": 2}, seed=3)
    assert cfg.seed == 3


def test_sampled_values_are_coerced_to_the_field_types():
    cfg = trial_config(base(), {"epochs": 6.0, "momentum": "0.9", "balanced_batches": "true"}, seed=0)
    assert cfg.epochs == 6 and type(cfg.epochs) is int
    assert cfg.momentum == 0.9 and cfg.balanced_batches is True


def test_base_is_not_modified():
    b = base()
    trial_config(b, {"lr": 3e-4}, seed=0)
    assert b == base()


@pytest.mark.parametrize("sampled, expected", [
    ({"alpha": 1.5}, "alpha=1.5"),
    ({"lr": 0.0}, "lr=0.0 (expected > 0)"),
    ({"ce_over": "unseen"}, "ce_over='unseen'"),
    ({"epochs": 2.5}, "epochs: expected an integer, got 2.5"),
    ({"amp": "maybe"}, "amp: expected a boolean, got 'maybe'"),
])
def test_invalid_values_are_refused_with_the_field(sampled, expected):
    with pytest.raises(ValueError) as err:
        trial_config(base(), sampled, seed=0)
    assert expected in str(err.value)
