"""A study's options (msdn/study/options.py): the one source of tune/run.py's flags, their checks, and the
resolved options; docs/study.md's flags table against the parser; bad flags refused before Ray starts.

The refusals run `python tune/run.py` as a user does (a subprocess, in an empty working directory) for one
case of each family, and `main(argv)` in-process (the same error policy) for every numeric flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from msdn.study.options import (FIELDS, KINDS, StudyError, StudyOptions, StudyRequest, experiment_path, flag_names,
                                resolve_options, with_defaults)

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "tune" / "run.py")]
NUMBER_FIELDS = [f for f in FIELDS if KINDS[f.name][0] in (int, float)]
FLOAT_FIELDS = [f for f in NUMBER_FIELDS if KINDS[f.name][0] is float]
BOUNDED = [f for f in NUMBER_FIELDS if f.metadata["flag"].low is not None]


def tune_run():
    spec = importlib.util.spec_from_file_location("tune_run_for_options", REPO / "tune" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- the request: every value checked as it is made ----------------------------------------------------------
def test_every_number_option_has_a_floor():
    assert {f.name for f in FLOAT_FIELDS} == {"cpus_per_trial", "gpus_per_trial", "tracking_timeout"}
    assert {f.name for f in NUMBER_FIELDS} == {f.name for f in BOUNDED}  # counts, shares, seconds: none negative


@pytest.mark.parametrize("field", FLOAT_FIELDS, ids=lambda f: f.name)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_naming_the_flag(field, value):
    with pytest.raises(StudyError) as info:
        StudyRequest(dataset="synthetic", **{field.name: value})
    flag = flag_names(field)[-1]
    assert str(info.value).startswith(f"{flag} {value}: expected a finite number")


@pytest.mark.parametrize("field", BOUNDED, ids=lambda f: f.name)
def test_numbers_below_their_bound_are_refused(field):
    flag = field.metadata["flag"]
    kind = KINDS[field.name][0]
    edge = kind(flag.low)
    below = edge if flag.above else edge - (1 if kind is int else 0.5)
    with pytest.raises(StudyError, match=re.escape(f"{flag_names(field)[-1]} {below}: expected ")):
        StudyRequest(dataset="synthetic", **{field.name: below})
    StudyRequest(dataset="synthetic", **{field.name: edge + 1 if flag.above else edge})  # the bound itself is fine


@pytest.mark.parametrize("changes, message", [
    ({"num_samples": 2.5}, "--num-samples 2.5: expected an integer"),
    ({"num_samples": True}, "--num-samples True: expected an integer"),
    ({"cpus_per_trial": "1"}, "--cpus-per-trial '1': expected a number"),
    ({"refit": "no"}, "--no-refit 'no': expected true or false"),
    ({"dataset": "imagenet"}, "--dataset 'imagenet': expected one of cub, sun, awa2, synthetic"),
    ({"protocol": "test"}, "--protocol 'test': expected one of paper, val"),
    ({"device": "gpu"}, "--device 'gpu': expected auto, cpu, cuda or cuda:N"),
    ({"dataset": None}, "--dataset: a value is required"),
])
def test_values_of_the_wrong_kind_are_refused_naming_the_flag(changes, message):
    with pytest.raises(StudyError, match=re.escape(message)):
        StudyRequest(**{"dataset": "synthetic", **changes})


@pytest.mark.parametrize("name, found", [
    ("../../x", "contains a path separator"), ("/tmp/x", "contains a path separator"),
    ("a/b", "contains a path separator"), ("a\\b", "contains a path separator"), ("..", "names the root folder"),
    (".", "names the root folder"), ("", "is empty"), ("  ", "is empty"), ("a\nb", "contains a control character"),
    ("a\x00b", "contains a control character"), ("é" * 101, "is longer than 200 bytes"),
])
def test_experiment_names_that_are_not_one_plain_folder_name_are_refused(name, found):
    with pytest.raises(StudyError) as info:
        StudyRequest(dataset="synthetic", experiment=name)
    assert str(info.value).startswith(f"--experiment {name!r}: {found}")
    assert "under --storage-path" in str(info.value)


@pytest.mark.parametrize("name", ["msdn-cub-val", "my study", "étude-δ", "v1.2", "..hidden", "a..b", "x" * 200])
def test_plain_experiment_names_stay_inside_the_storage_path(tmp_path, name):
    opts = with_defaults(StudyRequest(dataset="synthetic", experiment=name, storage_path=str(tmp_path / "store")), 4)
    path = Path(experiment_path(opts))
    assert path.parent == tmp_path / "store" and path.name == name
    path.mkdir(parents=True)  # a real folder, where it belongs
    assert tree(tmp_path) == ["store", f"store/{name}"]


# -- the resolved options -------------------------------------------------------------------------------------
def test_with_defaults_fills_every_default_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts = with_defaults(StudyRequest(dataset="cub", protocol="paper"), max_t=30)
    assert isinstance(opts, StudyOptions) and isinstance(opts, StudyRequest)
    assert opts.experiment == "msdn-cub-paper" and opts.max_epochs == 30
    assert opts.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert opts.storage_path == str(tmp_path / "results") and opts.data_root == str(tmp_path / "data")
    assert opts.search_space == REPO / "search_spaces" / "cub.yaml"
    assert (opts.address, opts.gpus_per_trial, opts.max_concurrent) == (None, None, None)  # the cluster decides
    given = with_defaults(StudyRequest(dataset="cub", max_epochs=5, experiment="e", mlflow_uri="http://h:5000",
                                       storage_path="s3://bucket/p", search_space=Path("mine.yaml")), max_t=30)
    assert (given.max_epochs, given.experiment, given.mlflow_uri) == (5, "e", "http://h:5000")
    assert given.storage_path == "s3://bucket/p" and given.search_space == Path("mine.yaml")  # a URI stays one
    assert with_defaults(opts, max_t=99) == opts  # resolving resolved options changes nothing


def test_resolved_options_cannot_hold_an_unresolved_value(tmp_path):
    resolved = {"search_space": Path("s.yaml"), "max_epochs": 3, "experiment": "e", "mlflow_uri": "sqlite:///m.db",
                "storage_path": str(tmp_path), "data_root": str(tmp_path)}
    StudyOptions(dataset="synthetic", **resolved)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'max_epochs'"):
        StudyOptions(dataset="synthetic", **{k: v for k, v in resolved.items() if k != "max_epochs"})
    with pytest.raises(ValueError, match="unresolved study options: mlflow_uri"):
        StudyOptions(dataset="synthetic", **{**resolved, "mlflow_uri": None})
    with pytest.raises(ValueError, match="relative paths"):
        StudyOptions(dataset="synthetic", **{**resolved, "data_root": "data"})
    with pytest.raises(StudyError, match="--experiment '../x'"):  # the values' checks hold here too
        StudyOptions(dataset="synthetic", **{**resolved, "experiment": "../x"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        StudyOptions(dataset="synthetic", **resolved).max_epochs = 4


def test_resolve_options_checks_what_the_values_point_at(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    request = StudyRequest(dataset="synthetic", data_root=str(synthetic_root), storage_path="store", max_epochs=3)
    opts, space = resolve_options(request)
    assert opts == with_defaults(request, space.asha.max_t) and space.path == opts.search_space
    assert resolve_options(opts)[0] == opts
    with pytest.raises(StudyError, match="--max-epochs 1 is below the ASHA grace period"):
        resolve_options(dataclasses.replace(request, max_epochs=1))
    assert tree(tmp_path) == []  # checking wrote nothing: no store, no folder


# -- the parser and the docs ---------------------------------------------------------------------------------
def flag_rows(markdown: str) -> dict[str, str]:
    """docs/study.md's flags table: the long flag of each row -> its default cell."""
    section = markdown.split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `-"):
            continue
        longs = re.findall(r"`(--[a-z][a-z-]*)", cells[0])
        assert len(longs) == 1, f"docs/study.md: a row should name one flag: {line}"
        assert longs[0] not in rows, f"docs/study.md lists {longs[0]} twice"
        assert cells[2], f"docs/study.md: {longs[0]} has no meaning"
        rows[longs[0]] = cells[1]
    return rows


def parser_default(action: argparse.Action) -> str:
    """A flag's default as the parser has it, in the table's words."""
    if action.required:
        return "(required)"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off"
    if action.default is None:  # the help says in words what no value means
        return re.search(r"\(default: (.*)\)$", action.help).group(1)
    return str(action.default)


def test_docs_flags_table_lists_every_flag_with_the_parsers_default():
    parser = tune_run().build_parser()
    actions = {a.option_strings[-1]: a for a in parser._actions if a.option_strings[-1] != "--help"}
    rows = flag_rows((REPO / "docs" / "study.md").read_text())
    assert sorted(rows) == sorted(actions), "docs/study.md's flags table and tune/run.py's flags differ"
    assert list(rows) == list(actions), "docs/study.md's flags table is not in --help order"
    for flag, cell in rows.items():
        assert cell.replace("`", "") == parser_default(actions[flag]), f"docs/study.md: the default of {flag}"


def test_each_field_has_one_flag_in_its_group():
    parser = tune_run().build_parser()
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups}
    for f in FIELDS:
        assert f.name in groups[f.metadata["flag"].group], f.name
    assert list(groups)[2:] == ["data", "study", "cluster", "tracking", "output"]  # after argparse's own two


# -- refused as a user meets it: exit 2, one paragraph, before Ray starts and before anything is written ---------
@pytest.mark.parametrize("field", NUMBER_FIELDS, ids=lambda f: f.name)
@pytest.mark.parametrize("text", ["nan", "inf"])
def test_every_numeric_flag_refuses_non_finite_values(field, text, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flag = flag_names(field)[-1]
    try:
        code = tune_run().main(["--dataset", "synthetic", flag, text])
    except SystemExit as exc:  # argparse's own refusal of an integer flag, after the usage line
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    if KINDS[field.name][0] is int:
        assert err.strip().splitlines()[-1].endswith(f"argument {flag}: invalid int value: '{text}'")
    else:
        assert err.startswith(f"error: {flag} {float(text)}: expected a finite number") and err.count("\n") == 1
    assert tree(tmp_path) == []


def refused(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    out = subprocess.run(RUN + ["--dataset", "synthetic", *argv], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Started a local Ray instance" not in out.stdout + out.stderr
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1  # one paragraph: `error: ...`
    return out


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_non_finite_shares_and_timeouts_are_refused_as_a_user(tmp_path):
    out = refused(tmp_path, "--cpus-per-trial", "nan")
    assert out.stderr == "error: --cpus-per-trial nan: expected a finite number > 0\n"
    out = refused(tmp_path, "--gpus-per-trial", "inf")
    assert out.stderr == "error: --gpus-per-trial inf: expected a finite number >= 0\n"
    assert tree(tmp_path) == []  # no mlflow.db, no results folder


@pytest.mark.parametrize("name", ["../../escaped", "ABSOLUTE", "sub/dir", ""])
@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_experiment_names_that_leave_the_storage_path_are_refused_as_a_user(tmp_path, name):
    home = tmp_path / "home" / "user"
    store = home / "store"
    store.mkdir(parents=True)
    (store / "another-study").mkdir()
    name = str(tmp_path / "abs") if name == "ABSOLUTE" else name
    before = tree(tmp_path)
    out = refused(home, "--storage-path", str(store), "--experiment", name)
    assert out.stderr.startswith(f"error: --experiment {name!r}: ")
    assert "expected a plain name without / or \\" in out.stderr
    assert tree(tmp_path) == before  # nothing written anywhere: not outside the store, not inside it
