"""`--help` of every command: grouped flags, each default shown once (never "None"), examples that parse.

Each command's --help runs once in a subprocess (as a user runs it); its examples are then parsed with the
command's own build_parser, so an example that names a flag that does not exist, or a value it refuses,
fails here. No Ray is started: tune/run.py only builds its parser.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WIDTH = 100  # msdn.cli.HELP_WIDTH: --help is never wider, however wide the terminal

# command shown in examples -> (argv that runs it, module holding build_parser, group titles)
COMMANDS = {
    "python -m msdn.train": (["-m", "msdn.train"], "msdn.train",
                             ["data and split", "model and loss", "optimisation", "evaluation and calibration",
                              "run", "output"]),
    "python -m msdn.evaluate": (["-m", "msdn.evaluate"], "msdn.evaluate", ["data", "evaluation", "output"]),
    "python -m msdn.prepare": (["-m", "msdn.prepare"], "msdn.prepare", ["data", "extraction", "output"]),
    "python -m msdn.synthetic": (["-m", "msdn.synthetic"], "msdn.synthetic", ["data"]),
    "python -m msdn.data.verify": (["-m", "msdn.data.verify"], "msdn.data.verify", ["data"]),
    "python tune/run.py": ([str(REPO / "tune" / "run.py")], "tune/run.py",
                           ["data", "study", "cluster", "tracking", "output"]),
}


@functools.lru_cache(maxsize=None)
def help_text(command: str) -> str:
    """The command's --help output, on a terminal far wider than WIDTH."""
    argv, _, _ = COMMANDS[command]
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{command} --help exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def build_parser(command: str):
    module = COMMANDS[command][1]
    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location("tune_run_for_help", REPO / module)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    return mod.build_parser()


def option_entries(text: str) -> dict[str, str]:
    """Each option's entry (its flag line and help, joined), from every section but usage and the examples."""
    entries: dict[str, str] = {}
    section, current = None, None
    for line in text.splitlines():
        if line and not line[0].isspace():
            section, current = line.rstrip(":"), None
        elif section not in (None, "examples") and not section.startswith("usage") and line.startswith("  "):
            if line[2] != " ":  # a new entry: "  --flag ARG   help ..."
                current = line.split()[0].rstrip(",")
                entries[current] = line
            elif current is not None:
                entries[current] += " " + line.strip()
    return entries


def example_lines(text: str) -> list[str]:
    lines = text.split("\nexamples:\n", 1)[1].splitlines() if "\nexamples:\n" in text else []
    return [line.strip() for line in lines if line.strip().startswith("python")]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_help_shows_each_default_once_and_never_none(command):
    text = help_text(command)
    assert "(default: None)" not in text and "default: None" not in text
    entries = option_entries(text)
    assert "--help" in entries or "-h" in entries
    for flag, entry in entries.items():
        assert entry.lower().count("default") <= 1, f"{command}: {flag} shows its default more than once: {entry}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_groups_flags_and_fits_width(command):
    text = help_text(command)
    lines = text.splitlines()
    for title in COMMANDS[command][2]:
        assert f"{title}:" in lines, f"{command} --help lacks the group {title!r}"
    too_wide = [line for line in lines if len(line) > WIDTH]
    assert not too_wide, f"{command} --help has lines over {WIDTH} columns: {too_wide}"
    parser = build_parser(command)
    for action in parser._actions:  # every flag explains itself (a flag without help would hide its default too)
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_examples_parse(command):
    examples = example_lines(help_text(command))
    assert len(examples) >= 2, f"{command} --help shows {len(examples)} examples; expected 2 or 3"
    parser = build_parser(command)
    prefix = shlex.split(command)
    for example in examples:
        words = shlex.split(example, comments=True)
        assert words[:len(prefix)] == prefix, f"example {example!r} does not start with {command!r}"
        try:
            parser.parse_args(words[len(prefix):])
        except SystemExit:
            pytest.fail(f"{command} --help example does not parse: {example}")


def test_train_flags_cover_every_config_field_once():
    """Each TrainConfig field is one flag, in the group and with the help its FieldFacts give (msdn/config.py)."""
    from msdn.config import FIELD_FACTS, FIELD_GROUPS, FIELD_NAMES
    from msdn.train import build_parser as train_parser

    parser = train_parser()
    flags = {action.dest: action for action in parser._actions if action.dest in FIELD_NAMES}
    assert set(flags) == FIELD_NAMES
    for group in parser._action_groups:
        for action in group._group_actions:
            if action.dest in FIELD_NAMES:
                assert group.title == FIELD_FACTS[action.dest].group, action.dest
                assert action.help.startswith(FIELD_FACTS[action.dest].help), action.dest
    titles = [group.title for group in parser._action_groups]
    assert [t for t in titles if t in FIELD_GROUPS] == list(FIELD_GROUPS)  # the groups in FIELD_GROUPS' order
    # None means "not given": the dataset's recipe, then --config, decide (config_from_args)
    args = parser.parse_args(["--dataset", "cub"])
    assert all(getattr(args, name) is None for name in FIELD_NAMES - {"dataset"})


def test_train_help_gives_the_per_dataset_defaults():
    from msdn.config import DATASET_DEFAULTS

    entries = option_entries(help_text("python -m msdn.train"))
    epochs = entries["--epochs"]
    for dataset, recipe in DATASET_DEFAULTS.items():
        assert f"{dataset} {recipe['epochs']}" in epochs
    assert re.search(r"default: 0\.0001 except synthetic 0\.0005\)", entries["--lr"])


def test_tune_flags_are_the_study_request_fields():
    """tune/run.py's parser is derived from StudyRequest: one flag per field, the field's default when not given."""
    from msdn.study.options import StudyRequest, requests_from_flags

    args = build_parser("python tune/run.py").parse_args(["--dataset", "cub"])
    assert set(vars(args)) == {f.name for f in dataclasses.fields(StudyRequest)}
    assert requests_from_flags(vars(args)) == [StudyRequest(dataset="cub")]
    several = build_parser("python tune/run.py").parse_args(["--dataset", "cub", "sun", "--num-samples", "5"])
    assert requests_from_flags(vars(several)) == [StudyRequest(dataset=d, num_samples=5) for d in ("cub", "sun")]
    switched = build_parser("python tune/run.py").parse_args(["--dataset", "cub", "--no-refit", "--resume", "-v"])
    assert (switched.refit, switched.resume, switched.verbose, switched.baseline) == (False, True, True, True)
