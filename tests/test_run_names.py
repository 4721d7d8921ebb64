"""Run names of a study's MLflow runs (msdn/study/tracking/names.py): exact strings for given values."""
from __future__ import annotations

import pytest

from msdn.config import FIELD_FACTS, TrainConfig
from msdn.study.results import BASELINE, TUNED
from msdn.study.tracking.names import (MAX_NAME_CHARS, PARAM_LABELS, compact, refit_run_name, trial_number,
                                       trial_run_name, trial_run_name_of)

# A trial of the synthetic search space, as Tune samples it (search_spaces/synthetic.yaml's order).
SYNTHETIC = {"lambda_dis": 0.0020137, "lambda_cal": 0.12345, "lr": 0.00031234, "lr_v_factor": 1.234,
             "weight_decay": 0.0001, "momentum": 0.9}


@pytest.mark.parametrize("value, text", [
    (0.00031234, "3.1e-4"), (0.002, "2.0e-3"), (0.0001, "1.0e-4"), (0.12345, "0.12"), (0.9, "0.90"),
    (2.0, "2.0"), (1.96, "2.0"), (12.5, "12"), (1234.0, "1200"), (123456.0, "1.2e5"), (-0.5, "-0.50"),
    (0.00999, "0.010"), (0.0, "0"), (0, "0"), (50, "50"), (True, "True"), ("adam", "adam"),
])
def test_compact_keeps_two_significant_digits_in_the_shorter_form(value, text):
    assert compact(value) == text


def test_compact_with_three_digits():
    assert [compact(v, 3) for v in (0.00031234, 0.12345, 0.9, 2.3)] == ["3.12e-4", "0.123", "0.900", "2.30"]


def test_trial_number_is_the_head_of_tunes_experiment_tag():
    assert trial_number("7_lambda_cal=0.1234,lr=0.0003") == 7
    assert trial_number("12") == 12
    assert trial_number("") is None and trial_number(None) is None and trial_number("lr=0.1") is None


def test_trial_name_shows_the_number_then_lr_and_the_lambdas_of_the_searched_params():
    assert trial_run_name(7, SYNTHETIC) == "t07 lr=3.1e-4 λdis=2.0e-3 λcal=0.12"
    assert trial_run_name(123, {"lr": 5e-4}) == "t123 lr=5.0e-4"


def test_trial_name_of_another_space_labels_unknown_params_by_their_name():
    assert trial_run_name(3, {"momentum": 0.0, "dropout": 0.25, "lr": 1e-3}) == "t03 lr=1.0e-3 mom=0 dropout=0.25"
    assert trial_run_name(3, {"weight_decay": 1e-5, "batch_size": 64}) == "t03 wd=1.0e-5 bs=64"
    assert trial_run_name(3, {}) == "t03"


def test_trial_name_without_a_number_starts_with_the_trial_id():
    assert trial_run_name(None, {"lr": 1e-3}, "6b63844f") == "6b63844f lr=1.0e-3"


def test_trial_name_stops_before_it_grows_past_the_limit():
    config = {"a_long_parameter_name_one": 0.5, "a_long_parameter_name_two": 0.5, "lr": 1e-3}
    name = trial_run_name(1, config)
    assert name == "t01 lr=1.0e-3 a_long_parameter_name_one=0.50" and len(name) <= MAX_NAME_CHARS


def test_trial_name_of_a_tune_trial():
    class Trial:
        trial_id, experiment_tag, config = "6b63844f", "7_lambda_cal=0.1234,...", SYNTHETIC

    assert trial_run_name_of(Trial()) == "t07 lr=3.1e-4 λdis=2.0e-3 λcal=0.12"


def test_refit_names():
    assert refit_run_name(TUNED, 3) == "refit tuned seed=3"
    assert refit_run_name(BASELINE, 214) == "refit authors seed=214"


def test_labels_come_from_the_fields_in_their_preference_order():
    """PARAM_LABELS is derived from TrainConfig's field facts (label, label_rank); the order is the preference.
    These labels keep their order; a field added later with a label joins them without editing this test."""
    expected = [("lr", "lr"), ("lambda_dis", "λdis"), ("lambda_cal", "λcal"), ("weight_decay", "wd"),
                ("lr_v_factor", "lrV"), ("momentum", "mom"), ("alpha", "α"), ("gamma", "γ"), ("batch_size", "bs")]
    assert [item for item in PARAM_LABELS.items() if item in expected] == expected
    assert PARAM_LABELS == {name: facts.label for name, facts in FIELD_FACTS.items() if facts.label}


@pytest.mark.parametrize("name", sorted(n for n, facts in FIELD_FACTS.items() if facts.study.search))
def test_every_searchable_field_has_a_name_part(name):
    value = getattr(TrainConfig(), name)
    assert trial_run_name(1, {name: value}) == f"t01 {FIELD_FACTS[name].label or name}={compact(value)}"
