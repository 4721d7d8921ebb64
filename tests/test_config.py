"""msdn/config.py: the authors' per-dataset recipes, validation that names the field, loose values
coerced to each field's type, and YAML overrides whose every error names the file."""
from __future__ import annotations

import re

import numpy as np
import pytest

from msdn.cli import UsageError
from msdn.config import (DATASET_DEFAULTS, DATASETS, FIELD_NAMES, FIELD_TYPES, TrainConfig, coerce_value,
                         default_config, overrides_from_yaml)

# The README's table (shiming-chen/MSDN, MSDN_{cub,sun,awa2}.py), written out here rather than read from
# DATASET_DEFAULTS, so an edit to the recipes in the code shows up as a failing test.
RECIPES = {
    "cub": dict(lr=1e-4, weight_decay=1e-4, momentum=0.9, lambda_cal=0.1, lambda_dis=1e-3, alpha=0.9,
                epochs=30, seed=214, balanced_batches=False, normalize_v=False),
    "sun": dict(lr=1e-4, weight_decay=1e-4, momentum=0.9, lambda_cal=1e-4, lambda_dis=1e-2, alpha=0.7,
                epochs=70, seed=2339, balanced_batches=True, normalize_v=False),
    "awa2": dict(lr=1e-4, weight_decay=1e-4, momentum=0.0, lambda_cal=0.12, lambda_dis=1e-7, alpha=1.0,
                 epochs=50, seed=87778, balanced_batches=True, normalize_v=True),
    "synthetic": dict(lr=5e-4, weight_decay=1e-4, momentum=0.9, lambda_cal=0.1, lambda_dis=1e-3, alpha=0.9,
                      epochs=10, seed=214, balanced_batches=False, normalize_v=False),
}
# What every recipe shares: RMSprop's own constants, batches of 50, the +-1 margin (gamma 2), no autocast.
SHARED = dict(batch_size=50, rms_alpha=0.99, rms_eps=1e-8, lr_v_factor=1.0, ce_over="all", margin=1.0, gamma=2.0,
              protocol="paper", amp=False)


# ----------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("dataset", DATASETS)
def test_default_config_is_the_authors_recipe(dataset):
    cfg = default_config(dataset)
    assert cfg.dataset == dataset
    for name, value in {**RECIPES[dataset], **SHARED}.items():
        assert getattr(cfg, name) == value, (dataset, name)


def test_every_dataset_has_a_recipe_and_recipes_name_only_fields():
    assert set(DATASET_DEFAULTS) == set(DATASETS) == set(RECIPES)
    for dataset, recipe in DATASET_DEFAULTS.items():
        assert set(recipe) <= FIELD_NAMES, dataset


def test_overrides_win_and_are_validated():
    cfg = default_config("sun", lr=3e-4, epochs=2)
    assert (cfg.lr, cfg.epochs, cfg.lambda_dis) == (3e-4, 2, 1e-2)
    with pytest.raises(ValueError, match=r"unknown configuration keys \['learning_rate'\]"):
        default_config("cub", learning_rate=1e-3)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*cub, sun, awa2, synthetic"):
        default_config("imagenet")
    with pytest.raises(ValueError, match="alpha=1.5"):
        default_config("cub", alpha=1.5)


def test_to_dict_round_trips_and_replace_copies():
    cfg = default_config("awa2")
    assert TrainConfig(**cfg.to_dict()) == cfg
    other = cfg.replace(seed=1)
    assert other.seed == 1 and cfg.seed == 87778


# ----------------------------------------------------------------------------- validate()
@pytest.mark.parametrize("field, value, expected", [
    ("dataset", "imagenet", "dataset='imagenet' (expected one of cub, sun, awa2, synthetic)"),
    ("protocol", "test", "protocol='test' (expected one of paper, val)"),
    ("ce_over", "unseen", "ce_over='unseen' (expected one of all, seen)"),
    ("epochs", 0, "epochs=0 (expected >= 1)"),
    ("batch_size", -5, "batch_size=-5 (expected >= 1)"),
    ("eval_batch_size", 0, "eval_batch_size=0 (expected >= 1)"),
    ("gamma_steps", 0, "gamma_steps=0 (expected >= 1)"),
    ("lr", 0.0, "lr=0.0 (expected > 0)"),
    ("lr_v_factor", -1.0, "lr_v_factor=-1.0 (expected > 0)"),
    ("rms_eps", 0.0, "rms_eps=0.0 (expected > 0)"),
    ("weight_decay", -1e-4, "weight_decay=-0.0001 (expected >= 0)"),
    ("momentum", -0.1, "momentum=-0.1 (expected >= 0)"),
    ("lambda_cal", -1.0, "lambda_cal=-1.0 (expected >= 0)"),
    ("lambda_dis", -1.0, "lambda_dis=-1.0 (expected >= 0)"),
    ("alpha", 1.5, "alpha=1.5 (expected a weight in [0, 1])"),
    ("alpha", -0.1, "alpha=-0.1 (expected a weight in [0, 1])"),
    ("val_fraction", 1.0, "val_fraction=1.0 (expected in (0, 1))"),
    ("val_fraction", 0.0, "val_fraction=0.0 (expected in (0, 1))"),
    ("gamma_min", 7.0, "gamma_min=7.0 > gamma_max=6.0"),
])
def test_validate_names_the_field_and_what_was_expected(field, value, expected):
    with pytest.raises(ValueError) as err:
        TrainConfig(**{field: value}).validate()
    assert str(err.value) == f"invalid training configuration: {expected}"


def test_validate_lists_every_problem_and_accepts_edges():
    with pytest.raises(ValueError) as err:
        TrainConfig(epochs=0, alpha=2.0, lr=-1.0).validate()
    assert all(s in str(err.value) for s in ("epochs=0", "alpha=2.0", "lr=-1.0"))
    cfg = TrainConfig(alpha=0.0, momentum=0.0, lambda_cal=0.0, lambda_dis=0.0, gamma_min=1.0, gamma_max=1.0)
    assert cfg.validate() is cfg


# ----------------------------------------------------------------------------- coerce_value()
@pytest.mark.parametrize("text, expected", [
    ("true", True), ("True", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False), ("off", False),
])
def test_bool_strings(text, expected):
    assert coerce_value("amp", text) is expected


def test_bool_from_other_values_and_a_bad_string():
    assert coerce_value("normalize_v", 1) is True and coerce_value("normalize_v", False) is False
    with pytest.raises(ValueError, match="amp: expected a boolean, got 'maybe'"):
        coerce_value("amp", "maybe")


def test_int_fields():
    assert coerce_value("epochs", "12") == 12 and type(coerce_value("epochs", "12")) is int
    assert coerce_value("batch_size", 50.0) == 50 and type(coerce_value("batch_size", 50.0)) is int
    with pytest.raises(ValueError, match="epochs: expected an integer, got 2.5"):
        coerce_value("epochs", 2.5)
    with pytest.raises(ValueError, match="seed: expected int, got 'abc'"):
        coerce_value("seed", "abc")


def test_float_and_str_fields():
    assert coerce_value("lr", "1e-3") == 1e-3 and type(coerce_value("lr", "1e-3")) is float
    assert coerce_value("alpha", 1) == 1.0 and type(coerce_value("alpha", 1)) is float
    with pytest.raises(ValueError, match="lambda_dis: expected float, got 'small'"):
        coerce_value("lambda_dis", "small")
    assert coerce_value("ce_over", "seen") == "seen"


# ----------------------------------------------------------------------------- overrides_from_yaml()
def test_yaml_overrides_are_coerced(tmp_path):
    path = tmp_path / "cfg.yaml"
    # PyYAML reads 1e-3 (no dot) as a string and 'yes' quoted as a string: both still arrive typed
    path.write_text("lr: 1e-3\nepochs: 4\namp: 'yes'\nce_over: seen\n")
    assert overrides_from_yaml(path) == {"lr": 1e-3, "epochs": 4, "amp": True, "ce_over": "seen"}
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert overrides_from_yaml(empty) == {}


def test_yaml_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(FileNotFoundError, match=re.escape(f"config file {path} does not exist")):
        overrides_from_yaml(path)


@pytest.mark.parametrize("text, expected", [
    ("lr: [1e-3\n", "is not valid YAML"),
    ("- lr\n- epochs\n", "expected a mapping of configuration keys, got list"),
    ("just a string\n", "expected a mapping of configuration keys, got str"),
    ("lr: 0.001\nlearning_rate: 3\nepoch: 2\n", "unknown keys ['epoch', 'learning_rate']; known keys: ["),
    ("epochs: many\n", "epochs: expected int, got 'many'"),
    ("amp: maybe\n", "amp: expected a boolean, got 'maybe'"),
])
def test_yaml_errors_name_the_file(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        overrides_from_yaml(path)
    message = str(err.value)
    assert message.startswith(f"config file {path}"), message
    assert expected in message, message


# ----------------------------------------------------------------------------- values that used to pass and fail later
FLOAT_FIELDS = sorted(name for name, kind in FIELD_TYPES.items() if kind is float)


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_float_field_must_be_finite(field, value):
    with pytest.raises(UsageError) as err:
        TrainConfig(**{field: value}).validate()
    assert f"{field}={value!r} (expected a finite number)" in str(err.value)


@pytest.mark.parametrize("field, value, expected", [
    ("amp", 5, "amp=5 (expected true or false)"),
    ("normalize_v", "yes", "normalize_v='yes' (expected true or false)"),
    ("epochs", 2.5, "epochs=2.5 (expected an integer)"),
    ("epochs", True, "epochs=True (expected an integer)"),
    ("lr", "0.1", "lr='0.1' (expected a number)"),
    ("device", 0, "device=0 (expected a string)"),
    ("seed", -1, "seed=-1 (expected >= 0)"),
    ("rms_alpha", 1.5, "rms_alpha=1.5 (expected a smoothing constant in [0, 1])"),
])
def test_validate_checks_types_strictly(field, value, expected):
    with pytest.raises(UsageError) as err:
        TrainConfig(**{field: value}).validate()
    assert str(err.value) == f"invalid training configuration: {expected}"


def test_validate_accepts_numpy_scalars():
    """What a sampler hands over (numpy ints and floats) is a number like any other."""
    cfg = TrainConfig(epochs=np.int64(3), lr=np.float64(1e-3), amp=np.bool_(True)).validate()
    assert cfg.epochs == 3


@pytest.mark.parametrize("value", [5, 2, -1, 0.5, "maybe", None, [True]])
def test_bool_is_strict(value):
    with pytest.raises(UsageError, match=f"amp: expected a boolean, got {re.escape(repr(value))}"):
        coerce_value("amp", value)


def test_numbers_refuse_booleans_and_strings_refuse_containers():
    with pytest.raises(UsageError, match="epochs: expected int, got True"):
        coerce_value("epochs", True)
    with pytest.raises(UsageError, match="lr: expected float, got False"):
        coerce_value("lr", False)
    with pytest.raises(UsageError, match=r"device: expected a string, got \['cuda'\]"):
        coerce_value("device", ["cuda"])
    with pytest.raises(UsageError, match="epochs: expected an integer, got inf"):
        coerce_value("epochs", float("inf"))
    assert coerce_value("amp", np.bool_(False)) is False and coerce_value("amp", 0) is False


def test_yaml_non_finite_and_loose_booleans_are_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("amp: 5\n")
    with pytest.raises(UsageError, match=f"config file {re.escape(str(path))}: amp: expected a boolean, got 5"):
        overrides_from_yaml(path)
    path.write_text("lr: .nan\n")
    with pytest.raises(UsageError, match=r"lr=nan \(expected a finite number\)"):
        default_config("cub", **overrides_from_yaml(path))
    with pytest.raises(UsageError, match="is a folder"):
        overrides_from_yaml(tmp_path)


# ----------------------------------------------------------------------------- field facts (one place per field)
def test_every_field_carries_complete_facts():
    """Each field's `option(...)` says everything the derived views need, and says it consistently."""
    from dataclasses import fields

    from msdn.config import FIELD_FACTS, FIELD_GROUPS, FieldFacts

    assert list(FIELD_FACTS) == [f.name for f in fields(TrainConfig)]
    for f in fields(TrainConfig):
        facts = f.metadata.get("facts")
        assert isinstance(facts, FieldFacts), f"{f.name} is not declared with option(...)"
        assert facts.help.strip() and facts.group in FIELD_GROUPS, f.name
        assert facts.allows(f.default), f"{f.name}: its default {f.default!r} is outside its own range"
        assert facts.study.fix or not facts.study.search, f"{f.name}: searchable but not fixable"
        assert facts.study.why or (facts.study.search and facts.study.fix), f"{f.name}: a refusal must say why"
        if facts.choices is not None:
            assert FIELD_TYPES[f.name] is str and f.default in facts.choices, f.name
        if facts.label_rank is not None:
            assert facts.label, f"{f.name}: a rank without a label"
    labels = [facts.label for facts in FIELD_FACTS.values() if facts.label]
    ranks = [facts.label_rank for facts in FIELD_FACTS.values() if facts.label_rank is not None]
    assert len(set(labels)) == len(labels) and len(set(ranks)) == len(ranks)


def out_of_domain(name: str):
    """A value of the field's type just outside its range or choices (None when any value of the type goes)."""
    from msdn.config import FIELD_FACTS

    facts = FIELD_FACTS[name]
    if facts.choices is not None:
        return "not-" + facts.choices[0]
    for bound, step in ((facts.ge, -1), (facts.gt, 0), (facts.le, 1), (facts.lt, 0)):
        if bound is not None:
            return FIELD_TYPES[name](bound + step)
    return None


@pytest.mark.parametrize("name", sorted(FIELD_NAMES))
def test_validate_covers_every_field(name):
    """validate() refuses, for every field, a value of another type and one outside the field's range."""
    from msdn.config import FIELD_FACTS

    wrong_type = 1.5 if FIELD_TYPES[name] in (int, str, bool) else "text"
    with pytest.raises(UsageError, match=re.escape(f"{name}={wrong_type!r} (expected")):
        TrainConfig(**{name: wrong_type}).validate()
    value = out_of_domain(name)
    if value is None:
        assert FIELD_FACTS[name].expected() is None
        return
    with pytest.raises(UsageError) as err:
        TrainConfig(**{name: value}).validate()
    assert f"{name}={value!r} ({FIELD_FACTS[name].expected()})" in str(err.value)


def test_range_words_are_derived_from_the_bounds():
    from msdn.config import FieldFacts

    facts = lambda **kw: FieldFacts(help="h", group="run", **kw)  # noqa: E731
    assert facts(ge=1).expected() == "expected >= 1"
    assert facts(gt=0).expected() == "expected > 0"
    assert facts(ge=0, le=1, noun="a weight").expected() == "expected a weight in [0, 1]"
    assert facts(gt=0, lt=1).expected() == "expected in (0, 1)"
    assert facts(ge=-2.5, lt=3).expected() == "expected in [-2.5, 3)"
    assert facts(choices=("a", "b")).expected() == "expected one of a, b"
    assert facts().expected() is None and facts().allows(123)
