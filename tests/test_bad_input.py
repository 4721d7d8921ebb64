"""Bad input, as a user meets it: every expected failure of every command exits with 2 and one `error:`
message that names the file or flag, shows no traceback, and leaves every file stored before unchanged
(docs/errors.md).

Files are broken on disk in a temporary copy of a tiny benchmark (tests/test_data.py's writer). Each
family has a representative case run as a real subprocess (`python -m msdn.train ...`); the other
cases call the same entry points in-process (`main(argv)`, which applies the same policy), which keeps
the file fast.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from msdn import evaluate, synthetic, train
from msdn.cli import EXIT_INPUT, EXIT_INTERRUPTED, UsageError, run_cli
from msdn.config import default_config
from msdn.data import DataError, benchmark_paths, load_benchmark, make_split, sidecar_path
from msdn.prepare import run as prepare_run
from test_data import tiny_arrays, write_tiny

REPO = Path(__file__).resolve().parents[1]
PWNED = "pwned-by-a-pickle"  # the file a malicious pickle would create if it were ever unpickled


# ----------------------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[Path, str]:
    """SHA-256 of every file under `roots` (or of `roots` themselves when they are files)."""
    files = []
    for root in roots:
        files += [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def assert_unchanged(before: dict[Path, str]) -> None:
    """Every file stored before is still there, byte for byte (new files, e.g. a cache, may appear)."""
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in before}
    changed = [str(p) for p in before if after[p] != before[p]]
    assert not changed, f"files changed or removed: {changed}"


def assert_refused(code: int, err: str, *needles: str) -> None:
    """Exit 2, one `error:` message naming what it should, no traceback."""
    assert code == EXIT_INPUT, err
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("error: ") == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def in_process(main, argv: list[str], capsys) -> tuple[int, str]:
    """Run an entry point in this process under its error policy; (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def as_user(module: str, argv: list[str], cwd: Path = REPO) -> tuple[int, str, str]:
    """`python -m module argv...` in a subprocess; (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc.returncode, proc.stdout, proc.stderr


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class Evil:
    """A pickle that runs a command when unpickled (it must never be)."""

    def __init__(self, folder: Path):
        self.target = str(folder / PWNED)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """A tiny CUB data root (6 classes, 3 channels, 2x2 regions, its cache built), a checkpoint trained on it
    for one epoch, the same run under the val protocol, and a checkpoint of the synthetic benchmark."""
    base = tmp_path_factory.mktemp("bad_input")
    root = base / "data"
    write_tiny(root)
    cfg = default_config("cub", data_root=str(root), epochs=1, device="cpu", batch_size=8)
    trainer = train.Trainer(cfg, progress=None)
    trainer.run_epoch()
    trainer.save(base / "cub.pt")
    train.Trainer(cfg.replace(protocol="val"), trainer.bench, progress=None).save(base / "cub_val.pt")
    return {"root": root, "ckpt": base / "cub.pt", "ckpt_val": base / "cub_val.pt"}


@pytest.fixture
def data(pristine, tmp_path) -> dict[str, Path]:
    """A private copy of the pristine files, free to break."""
    root = tmp_path / "data"
    shutil.copytree(pristine["root"], root)
    ckpts = {}
    for key in ("ckpt", "ckpt_val"):
        ckpts[key] = tmp_path / pristine[key].name
        shutil.copyfile(pristine[key], ckpts[key])
    return {"root": root, "dir": tmp_path, **ckpts}


@pytest.fixture(scope="module")
def synthetic_ckpt(synthetic_root, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synthetic_ckpt") / "synthetic.pt"
    train.Trainer(default_config("synthetic", data_root=str(synthetic_root), device="cpu"), progress=None).save(path)
    return path


def train_args(root: Path, *extra) -> list:
    return ["--dataset", "cub", "--data-root", root, "--epochs", 1, "--batch-size", 8, "--device", "cpu", *extra]


# ----------------------------------------------------------------------------- data files


def _h5(**arrays):
    def edit(p):
        with h5py.File(p.hdf5, "r+") as f:
            for key, value in arrays.items():
                del f[key]
                f[key] = value
    return edit


def _with(key: str, index: int, value) -> np.ndarray:
    arr = tiny_arrays()[key].copy()
    arr[index] = value
    return arr


A = tiny_arrays()
NAN_FEATURES = A["feature_map"].copy()
NAN_FEATURES[5, 1, 0, 1] = np.nan
INF_ATT = A["att"].copy()
INF_ATT[2, 3] = np.inf

DATA_CASES = {
    # name: (break the files, which file the message names, what else it says)
    "hdf5 truncated": (lambda p: truncate(p.hdf5), "hdf5", "cannot open as HDF5"),
    "hdf5 not HDF5": (lambda p: p.hdf5.write_text("feature maps, honest\n"), "hdf5", "cannot open as HDF5"),
    "hdf5 is a folder": (lambda p: (p.hdf5.unlink(), p.hdf5.mkdir()), "hdf5", "is a folder"),
    "NaN feature": (_h5(feature_map=NAN_FEATURES), "hdf5", "NaN/Inf in image 5"),
    "Inf attribute": (_h5(att=INF_ATT), "hdf5", "'att': found 1 NaN/Inf"),
    "index out of range": (_h5(trainval_loc=_with("trainval_loc", 0, 48)), "hdf5", "'trainval_loc'"),
    "negative index": (_h5(test_unseen_loc=_with("test_unseen_loc", 2, -3)), "hdf5", "e.g. -3"),
    "overlapping splits": (_h5(test_seen_loc=np.append(A["test_seen_loc"], A["trainval_loc"][0])), "hdf5",
                           "'trainval_loc/test_seen_loc'"),
    "wrong shape": (_h5(feature_map=A["feature_map"][:, 0]), "hdf5", "found float32 array of shape (48, 2, 2)"),
    "integer features": (_h5(feature_map=A["feature_map"].astype(np.int32)), "hdf5", "found int32 array"),
    "fractional labels": (_h5(labels=A["labels"] + 0.5), "hdf5", "'labels': found non-integer values"),
    "text labels": (_h5(labels=np.array([b"bird"] * 48)), "hdf5", "'labels': found dtype |S4"),
    "1-D att": (_h5(att=A["att"][0]), "hdf5", "'att': found float64 array of shape (5,)"),
    "mat truncated": (lambda p: truncate(p.att_splits), "att_splits", "cannot read as a MATLAB .mat file"),
    "mat is text": (lambda p: p.att_splits.write_text("att = [1 2 3]\n"), "att_splits", "cannot read as a MATLAB"),
    "malicious pickle": (lambda p: p.w2v_pkl.write_bytes(pickle.dumps(Evil(p.w2v_pkl.parent))), "w2v_pkl",
                         "refusing to unpickle global 'posix.system'"),
    "pickle truncated": (lambda p: truncate(p.w2v_pkl), "w2v_pkl", "cannot unpickle"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_broken_data_file(data, case, capsys):
    breaks, names, says = DATA_CASES[case]
    paths = benchmark_paths("cub", data["root"])
    shutil.rmtree(paths.cache_dir)  # so that a failure must come before the cache is built again
    breaks(paths)
    before = snapshot(data["root"])
    code, err = in_process(train.main, train_args(data["root"]), capsys)
    assert_refused(code, err, str(getattr(paths, names)), says)
    assert_unchanged(before)
    assert not list(data["root"].rglob(PWNED))
    assert not (paths.cache_dir.is_dir() and list(paths.cache_dir.glob("*.npy")))  # stopped before the cache


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_broken_data_file_as_a_user(data):
    p = benchmark_paths("cub", data["root"])
    truncate(p.hdf5)
    before = snapshot(data["root"])
    code, _, err = as_user("msdn.train", train_args(data["root"]))
    assert_refused(code, err, str(p.hdf5), "cannot open as HDF5", "truncated file")
    assert_unchanged(before)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_evaluate_validates_the_data_under_the_same_policy(data):
    """The validation used to run outside msdn.evaluate's error handling (a traceback, exit 1)."""
    p = benchmark_paths("cub", data["root"])
    _h5(test_unseen_loc=_with("test_unseen_loc", 0, -1))(p)
    before = snapshot(data["root"], data["ckpt"])
    code, _, err = as_user("msdn.evaluate", ["--dataset", "cub", "--data-root", data["root"], "--checkpoint",
                                             data["ckpt"], "--device", "cpu"])
    assert_refused(code, err, str(p.hdf5), "'test_unseen_loc'", "out-of-range")
    assert_unchanged(before)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_data_root_that_is_a_file(data, capsys):
    not_a_folder = data["dir"] / "data.hdf5"
    not_a_folder.write_text("x")
    for dataset in ("cub", "synthetic"):
        code, err = in_process(train.main, ["--dataset", dataset, "--data-root", not_a_folder], capsys)
        assert_refused(code, err, f"--data-root {not_a_folder} is a file; expected a folder")
    code, _, err = as_user("msdn.evaluate", ["--dataset", "cub", "--data-root", not_a_folder, "--checkpoint",
                                             data["ckpt"]])
    assert_refused(code, err, f"--data-root {not_a_folder} is a file")
    assert not_a_folder.read_text() == "x"


# ----------------------------------------------------------------------------- configuration and flags

FLAG_CASES = {
    "--lr inf": (["--lr", "inf"], "lr=inf (expected a finite number)"),
    "--momentum nan": (["--momentum", "nan"], "momentum=nan (expected a finite number)"),
    "--gamma nan": (["--gamma", "nan"], "gamma=nan (expected a finite number)"),
    "--epochs 0": (["--epochs", "0"], "epochs=0 (expected >= 1)"),
    "--amp 5": (["--amp", "5"], "--amp: expected a boolean, got '5'"),
    "--device gpu": (["--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
    "--resume alone": (["--resume"], "--resume needs --checkpoint PATH"),
}
YAML_CASES = {
    "amp: 5": ("amp: 5\n", "amp: expected a boolean, got 5"),
    "lr: .inf": ("lr: .inf\n", "lr=inf (expected a finite number)"),
    "unknown key": ("learning_rate: 0.1\n", "unknown keys ['learning_rate']"),
    "not YAML": ("lr: [0.1\n", "is not valid YAML"),
    "a list": ("- lr\n", "expected a mapping of configuration keys, got list"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flag(data, case, capsys):
    flags, says = FLAG_CASES[case]
    shutil.rmtree(benchmark_paths("cub", data["root"]).cache_dir)
    before = snapshot(data["root"])
    code, err = in_process(train.main, [*train_args(data["root"])[:-2], *flags], capsys)
    assert_refused(code, err, says)
    assert_unchanged(before)
    assert not benchmark_paths("cub", data["root"]).cache_dir.exists()  # stopped before any data work


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_bad_config_file(data, case, capsys):
    text, says = YAML_CASES[case]
    config = data["dir"] / "cfg.yaml"
    config.write_text(text)
    code, err = in_process(train.main, [*train_args(data["root"]), "--config", config], capsys)
    assert_refused(code, err, says, *(["config file", str(config)] if case != "lr: .inf" else []))


def test_config_file_missing_or_a_folder(data, capsys):
    for path, says in ((data["dir"] / "absent.yaml", "does not exist"), (data["dir"], "is a folder")):
        code, err = in_process(train.main, [*train_args(data["root"]), "--config", path], capsys)
        assert_refused(code, err, f"config file {path}", says)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_non_finite_learning_rate_as_a_user(data):
    code, _, err = as_user("msdn.train", train_args(data["root"], "--lr", "inf"))
    assert_refused(code, err, "lr=inf (expected a finite number)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(data, capsys):
    code, err = in_process(train.main, [*train_args(data["root"])[:-2], "--device", "cuda"], capsys)
    assert_refused(code, err, "--device cuda: CUDA is not available on this machine")


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_evaluate_flags_are_validated_before_any_work(data, capsys):
    argv = ["--dataset", "cub", "--data-root", data["root"], "--checkpoint", data["ckpt"], "--device", "cpu"]
    code, _, err = as_user("msdn.evaluate", [*argv, "--alpha", "5"])
    assert_refused(code, err, "alpha=5.0 (expected a weight in [0, 1])")
    code, err = in_process(evaluate.main, [*argv, "--gamma", "nan"], capsys)
    assert_refused(code, err, "gamma=nan (expected a finite number)")
    code, err = in_process(evaluate.main, [*argv[:-2], "--device", "tpu:0"], capsys)
    assert_refused(code, err, "--device tpu:0")


# ----------------------------------------------------------------------------- checkpoints


def _ours_without(key: str):
    def make(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        del state["model"][key]
        torch.save(state, path)
    return make


def _authors_without_bias(path: Path) -> None:
    state = torch.load(path, weights_only=True)["model"]
    sd = {"V": state["V"], "W_1": state["W_1"], "W_2": state["W_2"], "W_1_1": state["W_1_1"], "W_2_1": state["W_2_1"],
          "att": state["att"], "mask_bias": torch.where(state["seen"], -1.0, 1.0)[None]}
    torch.save(sd, path)


def _authors_with_channels(n_channels: int):
    def make(path: Path) -> None:
        state = torch.load(path, weights_only=True)["model"]
        i, d = state["V"].shape
        sd = {"V": state["V"], "W_1": torch.zeros(d, n_channels), "W_2": torch.zeros(d, n_channels),
              "W_1_1": torch.zeros(n_channels, d), "W_2_1": torch.zeros(d, n_channels), "att": state["att"],
              "mask_bias": torch.where(state["seen"], -1.0, 1.0)[None], "bias": torch.tensor(1.0)}
        torch.save(sd, path)
    return make


CHECKPOINT_CASES = {
    # name: (break the checkpoint file, what the message says after naming it)
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "cannot be read as a checkpoint"),
    "truncated": (truncate, "a damaged or truncated zip archive"),
    "text": (lambda p: p.write_text("epoch 3, lr 1e-4\n"), "cannot be read as a checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "the file is empty or truncated"),
    "malicious pickle": (lambda p: torch.save({"model": Evil(p.parent)}, p), "it refers to posix.system"),
    "missing key": (_ours_without("W_1"), "['W_1']"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
@pytest.mark.parametrize("command", ["evaluate", "train --resume"])
def test_broken_checkpoint(data, case, command, capsys):
    breaks, says = CHECKPOINT_CASES[case]
    ckpt = data["ckpt"]
    breaks(ckpt)
    before = snapshot(data["root"], ckpt)
    if command == "evaluate":
        argv = ["--dataset", "cub", "--data-root", data["root"], "--checkpoint", ckpt, "--device", "cpu"]
        code, err = in_process(evaluate.main, argv, capsys)
    else:
        code, err = in_process(train.main, train_args(data["root"], "--checkpoint", ckpt, "--resume"), capsys)
    assert_refused(code, err, f"--checkpoint {ckpt}", says)
    assert_unchanged(before)
    assert not (ckpt.parent / PWNED).exists()


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_malicious_checkpoint_as_a_user(data):
    ckpt = data["ckpt"]
    torch.save({"model": Evil(ckpt.parent)}, ckpt)
    before = snapshot(ckpt)
    code, _, err = as_user("msdn.evaluate", ["--dataset", "cub", "--data-root", data["root"], "--checkpoint", ckpt])
    assert_refused(code, err, f"--checkpoint {ckpt}", "posix.system", "refused")
    assert not (ckpt.parent / PWNED).exists()
    assert_unchanged(before)


@pytest.mark.parametrize("case, says", [
    ("other dataset", "was trained on dataset 'synthetic'"),
    ("other protocol", "does not fit the paper split of cub: the checkpoint has 4 classes (2 seen)"),
    ("other channels", "5 feature channels; the split has 6 classes (4 seen), 5 attributes and 3 channels"),
    ("authors' missing key", "the authors' MSDN state dict lacks ['bias']"),
    ("a folder", "is a folder; expected a checkpoint file"),
    ("no such file", "no such file"),
])
@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_evaluate_refuses_a_checkpoint_that_does_not_fit(data, synthetic_ckpt, case, says, capsys):
    ckpt = {"other dataset": synthetic_ckpt, "other protocol": data["ckpt_val"], "a folder": data["dir"],
            "no such file": data["dir"] / "absent.pt"}.get(case, data["ckpt"])
    if case == "other channels":
        _authors_with_channels(5)(ckpt)
    elif case == "authors' missing key":
        _authors_without_bias(ckpt)
    before = snapshot(data["root"], ckpt) if ckpt.exists() else {}
    argv = ["--dataset", "cub", "--data-root", data["root"], "--checkpoint", ckpt, "--device", "cpu"]
    if case == "other protocol":  # evaluated on the paper split, which it was not trained for
        argv += ["--protocol", "paper"]
    code, err = in_process(evaluate.main, argv, capsys)
    assert_refused(code, err, f"--checkpoint {ckpt}", says)
    assert_unchanged(before)


@pytest.mark.parametrize("case, says", [
    ("other dataset", "is from another run: dataset 'synthetic' (this run: 'cub')"),
    ("other protocol", "is from another run: protocol 'val' (this run: 'paper')"),
    ("other attribute count", "its model does not fit this run's MSDN"),
])
def test_resume_refuses_a_checkpoint_of_another_run(data, synthetic_ckpt, case, says, capsys):
    ckpt = {"other dataset": synthetic_ckpt, "other protocol": data["ckpt_val"]}.get(case, data["ckpt"])
    if case == "other attribute count":  # the same dataset and split, a model of another shape
        state = torch.load(ckpt, weights_only=True)
        state["model"]["V"] = torch.zeros(7, state["model"]["V"].shape[1])
        torch.save(state, ckpt)
    before = snapshot(data["root"], ckpt)
    code, err = in_process(train.main, train_args(data["root"], "--checkpoint", ckpt, "--resume"), capsys)
    assert_refused(code, err, f"--checkpoint {ckpt}", says)
    assert_unchanged(before)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_existing_checkpoint_is_never_overwritten_without_resume(data):
    before = snapshot(data["ckpt"])
    code, out, err = as_user("msdn.train", train_args(data["root"], "--checkpoint", data["ckpt"]))
    assert_refused(code, err, f"--checkpoint {data['ckpt']} exists; pass --resume to continue it")
    assert out == ""
    assert_unchanged(before)


def test_checkpoint_path_that_cannot_be_written(data, capsys):
    inside_a_file = data["ckpt"] / "run.pt"
    code, err = in_process(train.main, train_args(data["root"], "--checkpoint", inside_a_file), capsys)
    assert_refused(code, err, f"{data['ckpt']} is a file; expected a folder")
    code, err = in_process(train.main, train_args(data["root"], "--checkpoint", data["dir"]), capsys)
    assert_refused(code, err, "is a folder; expected the path of a checkpoint file")


# ----------------------------------------------------------------------------- the feature cache


def _garble(path: Path) -> None:
    """Garbage inside a file of the right size (0xff bytes are float16 NaNs)."""
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size - 200)
        fh.write(b"\xff" * 100)


def test_damaged_cache_is_named_and_rebuilt(data, capsys):
    cache = next(benchmark_paths("cub", data["root"]).cache_dir.glob("*.npy"))
    good = cache.read_bytes()
    _garble(cache)
    others = snapshot(data["root"])
    others.pop(cache)
    others.pop(sidecar_path(cache))  # derived too: rewritten with the cache
    code, err = in_process(train.main, train_args(data["root"]), capsys)
    assert code == 0, err
    assert cache.read_bytes() == good  # rebuilt from the HDF5: a derived file
    assert_unchanged(others)


def test_damaged_cache_message_names_the_file(data):
    cache = next(benchmark_paths("cub", data["root"]).cache_dir.glob("*.npy"))
    _garble(cache)
    lines: list[str] = []
    load_benchmark("cub", data["root"], progress=lines.append)
    assert any(line.startswith(f"{cache}: block 0 of its data") and "rebuilding" in line for line in lines), lines


def test_cache_without_sidecar_is_rebuilt_and_verify_checks_everything(data):
    cache = next(benchmark_paths("cub", data["root"]).cache_dir.glob("*.npy"))
    good = cache.read_bytes()
    _garble(cache)
    code, out, err = as_user("msdn.data.verify", ["--dataset", "cub", "--data-root", data["root"]])
    assert code == 0, err
    assert f"{cache}: block 0 of its data" in out and "rebuilding" in out and "matches its digest" in out
    assert cache.read_bytes() == good
    sidecar_path(cache).unlink()
    lines: list[str] = []
    load_benchmark("cub", data["root"], progress=lines.append)
    assert any("has no digest file" in line for line in lines) and sidecar_path(cache).is_file()


def test_non_finite_row_names_itself_where_it_enters_a_batch(data, tmp_path):
    """Damage the cheap check cannot see (a copy of the cache outside its checks) stops at the batch, by name."""
    bench = load_benchmark("cub", data["root"], progress=None)
    bad = tmp_path / "features_f16_damaged.npy"
    feats = np.lib.format.open_memmap(bad, mode="w+", dtype=np.float16, shape=bench.features.shape)
    feats[:] = bench.features
    row = int(bench.trainval_loc[3])
    feats[row, 1, 2] = np.nan
    feats.flush()
    damaged = dataclasses.replace(bench, features=np.load(bad, mmap_mode="r"))
    # one batch of all 24 training images, so the damaged row is drawn
    cfg = default_config("cub", data_root=str(data["root"]), epochs=1, device="cpu", batch_size=24)
    trainer = train.Trainer(cfg, damaged, make_split(damaged, "paper"), progress=None)
    with pytest.raises(DataError) as err:
        trainer.run_epoch()
    assert f"{bad}: image {row} " in str(err.value) and "NaN/Inf" in str(err.value)
    with pytest.raises(DataError, match=f"image {row} "):
        evaluate.fused_scores(trainer.model, damaged.features, bench.trainval_loc, 0.9)


# ----------------------------------------------------------------------------- the synthetic benchmark


def test_synthetic_never_overwrites_files_it_cannot_prove_it_wrote(synthetic_root, tmp_path):
    """The issue's case: an optional file removed, the HDF5 modified; generating (another seed) must refuse."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("cache"))
    p = benchmark_paths("synthetic", root)
    p.res101.unlink()
    with h5py.File(p.hdf5, "r+") as f:
        f["original_att"][0, 0] = 42.0
    before = snapshot(root)
    code, out, err = as_user("msdn.synthetic", ["--data-root", root, "--seed", "1"])
    assert_refused(code, err, str(p.hdf5), "differs from what msdn.synthetic wrote", str(p.res101),
                   "Nothing was changed")
    assert "generating" not in out
    assert_unchanged(before)


def test_synthetic_files_without_their_marker_are_not_regenerated(synthetic_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("cache"))
    (root / "SYNTHETIC" / synthetic.MARKER).unlink()
    hdf5 = benchmark_paths("synthetic", root).hdf5
    truncate(hdf5)
    before = snapshot(root)
    code, err = in_process(train.main, ["--dataset", "synthetic", "--data-root", root, "--epochs", 1], capsys)
    assert_refused(code, err, str(hdf5), "cannot open as HDF5")
    assert_unchanged(before)


# ----------------------------------------------------------------------------- msdn.prepare


def test_prepare_folders(tmp_path, capsys):
    folder, a_file = tmp_path / "folder", tmp_path / "a_file"
    folder.mkdir()
    a_file.write_text("x")
    base = {"--images": folder, "--xlsa17": folder, "--out": tmp_path / "out"}
    for flag, value, says in (("--out", a_file, "is a file; expected a folder"),
                              ("--images", a_file, "is a file; expected a folder"),
                              ("--xlsa17", tmp_path / "absent", "no such folder")):
        argv = ["cub", *[x for k, v in {**base, flag: value}.items() for x in (k, v)], "--device", "cpu"]
        code, err = in_process(prepare_run, argv, capsys)
        assert_refused(code, err, f"{flag} {value}", says)
    code, err = in_process(prepare_run, ["cub", *[x for kv in base.items() for x in kv], "--device", "gpu"], capsys)
    assert_refused(code, err, "--device gpu")
    assert a_file.read_text() == "x" and not (tmp_path / "out").exists()


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_prepare_out_is_a_file_as_a_user(tmp_path):
    out = tmp_path / "out"
    out.write_text("x")
    code, _, err = as_user("msdn.prepare", ["cub", "--images", tmp_path, "--xlsa17", tmp_path, "--out", out])
    assert_refused(code, err, f"--out {out} is a file; expected a folder")
    assert out.read_text() == "x"


# ----------------------------------------------------------------------------- the policy itself


def test_policy_interrupt_bug_and_expected_failures(capsys):
    def interrupted(_argv):
        raise KeyboardInterrupt

    def bug(_argv):
        raise ZeroDivisionError("a bug")

    def usage(_argv):
        raise UsageError("--x 3: expected 1 or 2")

    def denied(_argv):
        raise PermissionError(13, "Permission denied", "/root/x.pt")

    assert run_cli(interrupted) == EXIT_INTERRUPTED and capsys.readouterr().err == "interrupted\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback (Python prints it, exit 1)
        run_cli(bug)
    assert run_cli(usage) == 2 and capsys.readouterr().err == "error: --x 3: expected 1 or 2\n"
    assert run_cli(denied) == 2 and capsys.readouterr().err == "error: /root/x.pt: Permission denied\n"
    assert run_cli(lambda argv: None) == 0 and run_cli(lambda argv: 3) == 3


def test_every_command_uses_the_policy():
    """Each command's entry point is wrapped by msdn.cli (its __wrapped__ is the undecorated main)."""
    from msdn.data import verify
    for entry in (train.main, evaluate.main, synthetic.main, verify.main, prepare_run):
        assert hasattr(entry, "__wrapped__"), entry
