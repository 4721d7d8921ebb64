"""Tests for msdn/synthetic.py: deterministic, fast, written in the real formats, and learnable but not trivial."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from msdn import synthetic
from msdn.data import DataError, benchmark_paths, load_benchmark, load_numpy_pickle, make_split


@pytest.fixture
def root(synthetic_root) -> Path:
    """The session's generated benchmark (seed 0, tests/conftest.py); read only."""
    return synthetic_root


def test_small_enough_to_generate_in_seconds(root):
    """Its size is what keeps generation, and every test that trains on it, fast: ~3000 maps of 256 x 7 x 7."""
    p = benchmark_paths("synthetic", root)
    with h5py.File(p.hdf5, "r") as f:
        n, *map_shape = f["feature_map"].shape
    assert n <= synthetic.NUM_CLASSES * synthetic.IMAGES_PER_CLASS[1] and map_shape == [256, 7, 7]
    assert p.hdf5.stat().st_size < 1.1 * n * 256 * 7 * 7 * 4  # the float32 maps and little else


def test_files_in_the_real_formats(root):
    p = benchmark_paths("synthetic", root)
    with h5py.File(p.hdf5, "r") as f:
        assert f["feature_map"].dtype == np.float32 and f["feature_map"].shape[1:] == (256, 7, 7)
        n = f["feature_map"].shape[0]
        assert f["att"].shape == (50, 64) and f["w2v_att"].shape == (64, 300)
        labels = f["labels"][()]
    mat = scipy.io.loadmat(p.att_splits)
    assert mat["att"].shape == (64, 50) and mat["trainval_loc"].shape[1] == 1 and mat["trainval_loc"].min() >= 1
    assert mat["allclasses_names"].shape == (50, 1)
    tv_ts = np.union1d(mat["trainval_loc"], mat["test_seen_loc"])
    assert np.array_equal(np.union1d(mat["train_loc"], mat["val_loc"]), tv_ts)  # the xlsa17 layout
    res = scipy.io.loadmat(p.res101, variable_names=["labels"])
    assert np.array_equal(res["labels"].ravel() - 1, labels) and labels.size == n
    assert load_numpy_pickle(p.w2v_pkl).shape == (64, 300)


def test_loaders_read_it(root):
    b = load_benchmark("synthetic", root, progress=None)
    assert b.features.shape[1:] == (49, 256) and b.att.shape == (50, 64) and 2500 < b.labels.size < 3500
    paper = make_split(b, "paper")
    assert (int(paper.seen.sum()), int((~paper.seen).sum())) == (40, 10)
    val = make_split(b, "val")
    assert (int(val.seen.sum()), int((~val.seen).sum())) == (27, 13) and "xlsa17" in val.note


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_deterministic_for_a_seed(root, tmp_path):
    synthetic.ensure_synthetic(tmp_path, seed=0, progress=None)
    a, b = benchmark_paths("synthetic", root), benchmark_paths("synthetic", tmp_path)
    with h5py.File(a.hdf5, "r") as fa, h5py.File(b.hdf5, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for key in fa:
            assert np.array_equal(fa[key][()], fb[key][()]), key
    ma, mb = scipy.io.loadmat(a.att_splits), scipy.io.loadmat(b.att_splits)
    for key in ("att", "trainval_loc", "train_loc", "val_loc", "test_unseen_loc"):
        assert np.array_equal(ma[key], mb[key]), key
    assert a.w2v_pkl.read_bytes() == b.w2v_pkl.read_bytes()
    other = synthetic.generate(seed=1)
    with h5py.File(a.hdf5, "r") as fa:
        assert other.labels.size != fa["labels"].shape[0] or not np.array_equal(other.labels, fa["labels"][()])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_complete_set_is_reused_and_interrupted_write_regenerated(tmp_path):
    synthetic.ensure_synthetic(tmp_path, progress=None)
    hdf5 = benchmark_paths("synthetic", tmp_path).hdf5
    mtime = hdf5.stat().st_mtime_ns
    synthetic.ensure_synthetic(tmp_path, progress=None)
    assert hdf5.stat().st_mtime_ns == mtime
    # As if killed while renaming into place: the marker vouches for the files, the HDF5 (renamed last) is absent.
    marker = tmp_path / "SYNTHETIC" / synthetic.MARKER
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "state": "writing"}))
    hdf5.unlink()
    lines: list[str] = []
    load_benchmark("synthetic", tmp_path, progress=lines.append)
    assert any("generating" in line for line in lines) and hdf5.is_file()
    assert json.loads(marker.read_text())["state"] == "complete"
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_files_without_a_marker_are_read_never_regenerated(synthetic_root, tmp_path):
    """A root whose marker is gone holds someone's files: loading reads them as they are (here: a truncated
    HDF5, reported), and generating refuses, listing them; nothing is written."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("cache"))
    (root / "SYNTHETIC" / synthetic.MARKER).unlink()
    hdf5 = benchmark_paths("synthetic", root).hdf5
    hdf5.write_bytes(hdf5.read_bytes()[:4096])
    before = _snapshot(root)
    with pytest.raises(DataError, match="cannot open as HDF5") as err:
        load_benchmark("synthetic", root, progress=None)
    assert str(hdf5) in str(err.value)
    with pytest.raises(DataError, match="refusing to write the synthetic benchmark") as err:
        synthetic.ensure_synthetic(root, progress=None)
    for p in benchmark_paths("synthetic", root).__dict__.values():
        if isinstance(p, Path) and p.suffix in (".hdf5", ".mat", ".pkl"):
            assert p.exists() == (str(p) in str(err.value))
    assert _snapshot(root) == before


def test_modified_file_and_removed_file_stop_a_regeneration(synthetic_root, tmp_path):
    """The issue's case: one optional file removed, the HDF5 modified; another seed must not overwrite them."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("cache"))
    p = benchmark_paths("synthetic", root)
    p.res101.unlink()
    with h5py.File(p.hdf5, "r+") as f:
        f["original_att"][0, 0] = 0.5  # an edit that keeps the file valid
    before = _snapshot(root)
    with pytest.raises(DataError) as err:
        synthetic.ensure_synthetic(root, seed=1, progress=None)
    msg = str(err.value)
    assert f"{p.hdf5}: differs from what msdn.synthetic wrote" in msg
    assert f"{p.res101}: missing, but listed as written" in msg and "empty --data-root" in msg
    assert _snapshot(root) == before
    load_benchmark("synthetic", root, progress=None)  # reads the user's files as they are
    assert {k: v for k, v in _snapshot(root).items() if "cache" not in k} == before


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_own_output_is_regenerated_for_another_seed(tmp_path):
    synthetic.ensure_synthetic(tmp_path, seed=3, progress=None)
    synthetic.ensure_synthetic(tmp_path, seed=4, progress=None)
    assert json.loads((tmp_path / "SYNTHETIC" / synthetic.MARKER).read_text())["seed"] == 4
    with h5py.File(benchmark_paths("synthetic", tmp_path).hdf5, "r") as f:
        assert np.array_equal(f["labels"][()], synthetic.generate(seed=4).labels)


def test_data_root_that_is_a_file(tmp_path):
    path = tmp_path / "data"
    path.write_text("not a folder")
    with pytest.raises(DataError, match=f"--data-root {path} is a file; expected a folder"):
        synthetic.ensure_synthetic(path, progress=None)
    with pytest.raises(DataError, match="is a file; expected a folder"):
        load_benchmark("synthetic", path, progress=None)
    assert path.read_text() == "not a folder"


def test_learnable_but_not_trivial(root):
    """A linear attribute regressor on mean-pooled regions recognises unseen classes far above chance,
    and even a supervised linear classifier does not solve the seen classes."""
    b = load_benchmark("synthetic", root, progress=None)
    s = make_split(b, "paper")
    x = np.asarray(b.features, dtype=np.float32).mean(1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tr, att = s.train_idx, b.att / np.linalg.norm(b.att, axis=1, keepdims=True)
    ridge = lambda t: np.linalg.solve(x[tr].T @ x[tr] + 1e-2 * np.eye(x.shape[1]), x[tr].T @ t)  # noqa: E731
    w = ridge(att[b.labels[tr]])
    unseen = np.flatnonzero(~s.seen)
    pred = unseen[(x[b.test_unseen_loc] @ w @ att[unseen].T).argmax(1)]
    zsl = np.mean([np.mean(pred[b.labels[b.test_unseen_loc] == k] == k) for k in unseen])
    assert zsl > 0.35  # chance: 0.10
    w_cls = ridge(np.eye(b.num_classes)[b.labels[tr]])
    seen_acc = np.mean((x[b.test_seen_loc] @ w_cls).argmax(1) == b.labels[b.test_seen_loc])
    assert 0.4 < seen_acc < 0.97


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "msdn.synthetic", "--data-root", str(tmp_path), "--seed", "3"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "seed 3" in out.stdout and benchmark_paths("synthetic", tmp_path).hdf5.is_file()
    # load_benchmark keeps a set generated with another seed instead of overwriting it with seed 0
    mtime = benchmark_paths("synthetic", tmp_path).hdf5.stat().st_mtime_ns
    load_benchmark("synthetic", tmp_path, progress=None)
    assert benchmark_paths("synthetic", tmp_path).hdf5.stat().st_mtime_ns == mtime
