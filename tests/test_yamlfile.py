"""msdn/yamlfile.py: every YAML file the package reads is read by one reader that refuses what could hurt.

Real files on disk, read as users give them: a "billion laughs" file (nested aliases that expand nine lines
into 387 million strings) under a configuration value and under a search space's `fixed:` entry, a key
given twice, bytes that are not UTF-8, values nested too deep. Each is refused quickly with a short
message, in-process (the error type, the time, the length) and as a user meets it: `python -m msdn.train
--config` and `tune/run.py --search-space` in subprocesses, exit 2, one `error:` line, no traceback, before
Ray starts or any file is written.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msdn.cli import UsageError
from msdn.config import overrides_from_yaml
from msdn.study.search_space import SearchSpaceError, load_search_space
from msdn.yamlfile import MAX_BYTES, MAX_DEPTH, SHOWN_CHARS, YamlFileError, read_yaml, shown

REPO = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 400  # characters: one paragraph, whatever the file holds


def laughs(indent: str = "  ") -> str:
    """A YAML list of nine nested aliases: 9**9 = 387,420,489 strings once expanded."""
    lines = [f"{indent}- &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{indent}- &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


SPACE_HEAD = ("metric: H\nmode: max\nasha: {max_t: 4, grace_period: 1, reduction_factor: 2}\n"
              "params:\n  lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}\n")
# case -> (config file bytes, search space file bytes, what the message says)
CASES = {
    "billion laughs": (("lr:\n" + laughs()).encode(), (SPACE_HEAD + "fixed:\n  lambda_cal:\n" + laughs("    ")).encode(),
                       "uses the anchor &a at line "),
    "duplicate key": (b"lr: 0.001\nepochs: 2\nlr: 0.003\n",
                      (SPACE_HEAD + "fixed:\n  batch_size: 32\n  batch_size: 64\n").encode(),
                      "has the key 'lr' twice in one mapping, at lines 1 and 3"),
    "not UTF-8": (b"lr: 0.001\ndevice: \xff\xfe\n", SPACE_HEAD.encode() + b"fixed: {device: \xe9t\xe9}\n",
                  "is not UTF-8 text (byte 0x"),
}
SPACE_SAYS = {"billion laughs": "uses the anchor &a at line 8, column 7",
              "duplicate key": "has the key 'batch_size' twice in one mapping, at lines 7 and 8",
              "not UTF-8": "is not UTF-8 text (byte 0xe9 on line 6)"}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- in-process: type, time, length
@pytest.mark.parametrize("case", CASES)
def test_config_file_refused_quickly_with_a_short_message(tmp_path, case):
    config, _, says = CASES[case]
    path = write(tmp_path, "cfg.yaml", config)
    start = time.perf_counter()
    with pytest.raises(UsageError) as err:
        overrides_from_yaml(path)
    assert time.perf_counter() - start < 0.5
    message = str(err.value)
    assert message.startswith(f"config file {path} ") and says in message, message
    assert len(message) < MAX_MESSAGE and "\n" not in message, message


@pytest.mark.parametrize("case", CASES)
def test_search_space_refused_quickly_with_a_short_message(tmp_path, case):
    _, space, _ = CASES[case]
    path = write(tmp_path, "space.yaml", space)
    start = time.perf_counter()
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(path, dataset="synthetic")
    assert time.perf_counter() - start < 0.5
    message = str(err.value)
    assert message.startswith(f"search space {path}: the file ") and SPACE_SAYS[case] in message, message
    assert len(message) < MAX_MESSAGE and "\n" not in message, message


def test_a_lone_alias_and_an_unused_anchor_are_refused(tmp_path):
    with pytest.raises(YamlFileError, match=r"uses the alias \*x at line 2, column 9"):
        read_yaml(write(tmp_path, "a.yaml", b"lr: 0.1\nepochs: *x\n"))
    with pytest.raises(YamlFileError, match="uses the anchor &keep at line 1"):
        read_yaml(write(tmp_path, "b.yaml", b"lr: &keep 0.1\n"))


def test_duplicate_keys_on_one_line_and_nested(tmp_path):
    with pytest.raises(YamlFileError, match=r"key 'lr' twice in one mapping, at line 1 \(columns 2 and 9\)"):
        read_yaml(write(tmp_path, "a.yaml", b"{lr: 1, lr: 2}\n"))
    with pytest.raises(YamlFileError, match="key 'low' twice in one mapping, at lines 3 and 4"):
        read_yaml(write(tmp_path, "b.yaml", b"params:\n  lr:\n    low: 1\n    low: 2\n"))


def test_what_would_otherwise_be_a_traceback(tmp_path):
    deep = write(tmp_path, "deep.yaml", b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n")  # RecursionError in PyYAML
    with pytest.raises(YamlFileError, match=f"nests values more than {MAX_DEPTH} levels deep"):
        read_yaml(deep)
    long_int = write(tmp_path, "int.yaml", b"seed: 1" + b"0" * 5000 + b"\n")  # ValueError from int()
    with pytest.raises(YamlFileError, match="holds a value Python cannot convert"):
        read_yaml(long_int)
    big = write(tmp_path, "big.yaml", b"# " + b"x" * MAX_BYTES + b"\n")
    with pytest.raises(YamlFileError, match="is larger than 1024 KiB"):
        read_yaml(big)


def test_ordinary_yaml_reads_as_before(tmp_path):
    text = b"lr: 1e-3\nepochs: 4\namp: 'yes'\nnested: {a: [1, 2.5, true, null]}\nmerged:\n  <<: {a: 1}\n  b: 2\n"
    assert read_yaml(write(tmp_path, "ok.yaml", text)) == {
        "lr": "1e-3", "epochs": 4, "amp": "yes", "nested": {"a": [1, 2.5, True, None]}, "merged": {"a": 1, "b": 2}}
    assert read_yaml(write(tmp_path, "empty.yaml", b"# nothing\n")) is None
    with pytest.raises(FileNotFoundError):
        read_yaml(tmp_path / "absent.yaml")
    with pytest.raises(IsADirectoryError):
        read_yaml(tmp_path)


def test_shown_is_bounded_in_length_and_in_work():
    nested: list = ["lol"] * 9
    for _ in range(8):  # the expanded billion laughs, built with shared lists: 387M strings if walked
        nested = [nested] * 9
    start = time.perf_counter()
    text = shown(nested)
    assert time.perf_counter() - start < 0.1 and len(text) <= SHOWN_CHARS
    assert shown("x" * 10_000).endswith("'") and len(shown("x" * 10_000)) <= SHOWN_CHARS
    assert shown([0.0, 0.9]) == "[0.0, 0.9]" and shown({"batch_size": 0}) == "{'batch_size': 0}"
    assert shown("lr", bare=True) == "lr" and len(shown("k" * 500, 40, bare=True)) == 40


def test_messages_never_render_an_unbounded_value(tmp_path):
    """A long value is shown cut, in config.py's and search_space.py's messages alike."""
    path = write(tmp_path, "cfg.yaml", ("epochs: " + "9" * 3000 + "x\n").encode())
    with pytest.raises(UsageError) as err:
        overrides_from_yaml(path)
    assert "epochs: expected int, got '999" in str(err.value) and len(str(err.value)) < MAX_MESSAGE
    space = write(tmp_path, "space.yaml", (SPACE_HEAD + "fixed: {batch_size: " + "b" * 3000 + "}\n").encode())
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(space)
    assert "fixed.batch_size = 'bbb" in str(err.value) and len(str(err.value)) < MAX_MESSAGE


# ----------------------------------------------------------------------------- as a user meets it (subprocesses)
@pytest.fixture(scope="module")
def user_runs(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, subprocess.Popen]]:
    """Every case through both commands, started at once (each pays Python's and torch's start-up)."""
    runs = {}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for case, (config, space, _) in CASES.items():
        folder = tmp_path_factory.mktemp(case.replace(" ", "_"))
        train = ["-m", "msdn.train", "--dataset", "synthetic", "--data-root", folder / "data",
                 "--config", write(folder, "cfg.yaml", config)]
        study = [REPO / "tune" / "run.py", "--dataset", "synthetic", "--data-root", folder / "data",
                 "--search-space", write(folder, "space.yaml", space), "--storage-path", folder / "results",
                 "--mlflow-uri", f"sqlite:///{folder / 'mlflow.db'}"]
        for command, argv in (("msdn.train", train), ("tune/run.py", study)):
            runs[case, command] = folder, subprocess.Popen([sys.executable, *map(str, argv)], cwd=folder, env=env,
                                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield runs
    for _, proc in runs.values():
        proc.kill()


@pytest.mark.parametrize("command", ["msdn.train", "tune/run.py"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_refused_as_a_user_meets_it(user_runs, case, command):
    folder, proc = user_runs[case, command]
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    says = CASES[case][2] if command == "msdn.train" else SPACE_SAYS[case]
    assert says in err and len(err) < MAX_MESSAGE, err
    assert out == ""
    # refused before any work: no data generated, no Ray session, no tracking store, no results folder
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.yaml", "space.yaml"]
