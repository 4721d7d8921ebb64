"""Tests for msdn/data/: loaders on files written in the exact on-disk formats, the real xlsa17 split
files (../shared/realdata), the restricted unpickler, every DataError case and the float16 cache."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from msdn.data import (DataError, benchmark_paths, cache_problem, check_data_present, data_dir, load_benchmark,
                       load_numpy_pickle, make_split, read_rows, sidecar_path)
from msdn.data.cache import _BlockHasher

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"

# ----------------------------------------------------------------------------- a tiny benchmark on disk

N_PER_CLASS, K, I, C, H, W = 8, 6, 5, 3, 2, 2
SEEN, UNSEEN, TRAIN_CLASSES = (0, 1, 2, 3), (4, 5), (0, 1)


def tiny_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """HDF5-convention arrays: 6 classes (4 seen, 2 unseen), 8 images each, 0-based locs."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), N_PER_CLASS)
    trainval = np.flatnonzero(np.isin(labels, SEEN) & (np.arange(labels.size) % N_PER_CLASS < 6))
    test_seen = np.flatnonzero(np.isin(labels, SEEN) & (np.arange(labels.size) % N_PER_CLASS >= 6))
    original = rng.uniform(0, 100, (K, I))
    return dict(
        feature_map=rng.uniform(0, 5, (labels.size, C, H, W)).astype(np.float32), labels=labels,
        trainval_loc=trainval, test_seen_loc=test_seen, test_unseen_loc=np.flatnonzero(np.isin(labels, UNSEEN)),
        att=original / np.linalg.norm(original, axis=1, keepdims=True), original_att=original,
        w2v_att=rng.standard_normal((I, 300)),
        train_loc=np.flatnonzero(np.isin(labels, TRAIN_CLASSES)),
        val_loc=np.flatnonzero(np.isin(labels, SEEN) & ~np.isin(labels, TRAIN_CLASSES)),
    )


def write_tiny(root: Path, ds: str = "cub", *, hdf5: dict | None = None, mat: dict | None = None,
               res101: dict | None = None, w2v_file: str | None = "pkl", with_mat: bool = True) -> dict:
    """Write the tiny benchmark under root in the exact formats; `hdf5`/`mat`/`res101` override or (None) drop keys."""
    a = tiny_arrays()
    p = benchmark_paths(ds, root)
    for path in (p.hdf5, p.att_splits, p.w2v_pkl):
        path.parent.mkdir(parents=True, exist_ok=True)
    h = {k: a[k] for k in ("feature_map", "labels", "trainval_loc", "test_seen_loc", "test_unseen_loc", "att",
                           "original_att", "w2v_att")}
    h.update(hdf5 or {})
    with h5py.File(p.hdf5, "w") as f:
        for key, value in h.items():
            if value is not None:
                f.create_dataset(key, data=value)
    if with_mat:
        names = np.empty((K, 1), dtype=object)
        for j in range(K):
            names[j, 0] = f"{j + 1:03d}.class_{j}"
        m = {"att": a["att"].T, "original_att": a["original_att"].T, "allclasses_names": names,
             **{k: (a[k] + 1).astype(np.uint16).reshape(-1, 1)
                for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")}}
        m.update(mat or {})
        scipy.io.savemat(p.att_splits, {k: v for k, v in m.items() if v is not None})
        files = np.empty((a["labels"].size, 1), dtype=object)
        for j in range(a["labels"].size):
            files[j, 0] = f"/old/machine/img_{j}.jpg"
        r = {"labels": (a["labels"] + 1).astype(np.uint8).reshape(-1, 1), "image_files": files}
        r.update(res101 or {})
        scipy.io.savemat(p.res101, {k: v for k, v in r.items() if v is not None})
    if w2v_file == "pkl":
        with open(p.w2v_pkl, "wb") as fh:
            pickle.dump(a["w2v_att"], fh, protocol=3)
    elif w2v_file == "npy":
        np.save(p.w2v_npy, a["w2v_att"])
    return a


def quiet(_msg: str) -> None:
    pass


# ----------------------------------------------------------------------------- loaders and protocols


def test_load_tiny_benchmark(tmp_path):
    a = write_tiny(tmp_path)
    b = load_benchmark("cub", tmp_path, progress=quiet)
    assert b.features.shape == (K * N_PER_CLASS, H * W, C) and b.feature_shape == (H * W, C)
    assert b.labels.dtype == np.int64 and np.array_equal(b.labels, a["labels"])
    assert b.att.dtype == np.float32 and np.allclose(b.att, a["att"])
    assert b.w2v_att.shape == (I, 300) and b.w2v_att.dtype == np.float32
    assert np.array_equal(b.train_loc, a["train_loc"]) and np.array_equal(b.val_loc, a["val_loc"])
    assert b.class_names[0] == "001.class_0" and len(b.class_names) == K
    assert data_dir("cub", tmp_path) == tmp_path / "CUB"


def test_w2v_from_npy_when_hdf5_lacks_it_and_names_default_without_mat(tmp_path):
    a = write_tiny(tmp_path, hdf5={"w2v_att": None}, w2v_file="npy", with_mat=False)
    b = load_benchmark("cub", tmp_path, progress=quiet)
    assert np.allclose(b.w2v_att, a["w2v_att"])
    assert b.train_loc is None and b.class_names[0] == "class_000"


def test_awa2_negative_attributes_clamped(tmp_path):
    att = tiny_arrays()["att"].copy()
    att[0, 0] = -0.2
    write_tiny(tmp_path, "awa2", hdf5={"att": att}, mat={"att": att.T})
    b = load_benchmark("awa2", tmp_path, progress=quiet)
    assert b.att.min() == 0.0 and b.att[0, 0] == 0.0


def test_paper_split(tmp_path):
    a = write_tiny(tmp_path)
    s = make_split(load_benchmark("cub", tmp_path, progress=quiet), "paper")
    assert np.array_equal(s.class_ids, np.arange(K)) and s.seen.tolist() == [True] * 4 + [False] * 2
    assert np.array_equal(s.train_idx, a["trainval_loc"]) and np.array_equal(s.eval_unseen_idx, a["test_unseen_loc"])


def test_val_split_uses_xlsa17_train_val_classes_and_no_test_image(tmp_path):
    a = write_tiny(tmp_path)
    b = load_benchmark("cub", tmp_path, progress=quiet)
    s = make_split(b, "val", val_fraction=0.2, seed=0)
    assert s.class_ids.tolist() == [0, 1, 2, 3] and s.seen.tolist() == [True, True, False, False]
    used = np.concatenate([s.train_idx, s.eval_seen_idx, s.eval_unseen_idx])
    assert np.isin(used, a["trainval_loc"]).all() and np.unique(used).size == used.size
    assert set(b.labels[s.eval_unseen_idx]) == {2, 3} and set(b.labels[s.train_idx]) == {0, 1}
    # 6 trainval images per class, 20% held out -> 1 per class
    assert np.bincount(b.labels[s.eval_seen_idx]).tolist() == [1, 1]
    assert s.labels[a["test_unseen_loc"]].tolist() == [-1] * a["test_unseen_loc"].size
    assert np.array_equal(s.class_ids[s.labels[used]], b.labels[used])
    assert np.allclose(s.att, b.att[s.class_ids])


def test_unknown_protocol_and_bad_fraction(tmp_path):
    write_tiny(tmp_path)
    b = load_benchmark("cub", tmp_path, progress=quiet)
    with pytest.raises(ValueError, match="protocol"):
        make_split(b, "test")
    with pytest.raises(ValueError, match="val_fraction"):
        make_split(b, "val", val_fraction=1.0)


# ----------------------------------------------------------------------------- errors


def test_unknown_dataset_lists_choices(tmp_path):
    with pytest.raises(DataError, match="cub, sun, awa2, synthetic"):
        load_benchmark("imagenet", tmp_path)


def test_missing_data_explains_every_path(tmp_path):
    with pytest.raises(DataError) as err:
        check_data_present("cub", tmp_path)
    msg = str(err.value)
    p = benchmark_paths("cub", tmp_path)
    for path in (p.hdf5, p.att_splits, p.res101, p.w2v_pkl):
        assert str(path) in msg
    assert "xlsa17" in msg and "msdn.prepare" in msg and "--dataset synthetic" in msg
    with pytest.raises(DataError, match="msdn.prepare"):
        load_benchmark("sun", tmp_path, progress=quiet)
    check_data_present("synthetic", tmp_path)  # generated on demand: never missing


def _bad_nan_att():
    att = tiny_arrays()["att"].copy()
    att[1, 2] = np.nan
    return att


def _loc_with(key: str, value: int, one_based: bool) -> np.ndarray:
    loc = tiny_arrays()[key].copy() + (1 if one_based else 0)
    loc[0] = value
    return loc.reshape(-1, 1).astype(np.int64) if one_based else loc


BAD_CASES = {
    # name: (write_tiny kwargs, file attribute of BenchmarkPaths, key expected in the message)
    "missing key": (dict(hdf5={"labels": None}), "hdf5", "labels"),
    "labels vs features": (dict(hdf5={"labels": np.repeat(np.arange(K), N_PER_CLASS)[:-1]}), "hdf5", "labels"),
    "att rows vs classes": (dict(hdf5={"att": np.ones((K + 1, I))}), "hdf5", "att"),
    "att cols vs w2v rows": (dict(hdf5={"w2v_att": np.ones((I + 1, 300))}, w2v_file=None), "hdf5", "w2v_att"),
    "pkl rows vs att cols": (dict(hdf5={"w2v_att": None}), None, "w2v"),
    "names vs classes": (dict(mat={"allclasses_names": np.array([["a"], ["b"]], dtype=object)}),
                         "att_splits", "allclasses_names"),
    "hdf5 loc out of range": (dict(hdf5={"trainval_loc": _loc_with("trainval_loc", K * N_PER_CLASS, False)}),
                              "hdf5", "trainval_loc"),
    "mat loc zero": (dict(mat={"val_loc": _loc_with("val_loc", 0, True)}), "att_splits", "val_loc"),
    "mat loc above N": (dict(mat={"train_loc": _loc_with("train_loc", K * N_PER_CLASS + 1, True)}),
                        "att_splits", "train_loc"),
    "overlap": (dict(hdf5={"test_seen_loc": np.concatenate([tiny_arrays()["test_seen_loc"], [0]])},
                     mat={"test_seen_loc": None}), "hdf5", "trainval_loc/test_seen_loc"),
    "nan att": (dict(hdf5={"att": _bad_nan_att()}), "hdf5", "att"),
    "inf w2v": (dict(hdf5={"w2v_att": np.full((I, 300), np.inf)}), "hdf5", "w2v_att"),
    "mat vs hdf5 locs": (dict(mat={"test_unseen_loc": np.flip(_loc_with("test_unseen_loc", 1, True))}),
                         "att_splits", "test_unseen_loc"),
    "mat att vs hdf5": (dict(mat={"att": np.ones((I, K))}), "att_splits", "att"),
    "res101 labels": (dict(res101={"labels": np.ones((K * N_PER_CLASS, 1), np.uint8)}), "res101", "labels"),
    "mat lacks a loc": (dict(mat={"test_seen_loc": None}), "att_splits", "test_seen_loc"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_and_key(tmp_path, case):
    kwargs, file_attr, key = BAD_CASES[case]
    if case == "pkl rows vs att cols":  # the pkl holds a matrix with the wrong number of rows
        write_tiny(tmp_path, **kwargs)
        with open(benchmark_paths("cub", tmp_path).w2v_pkl, "wb") as fh:
            pickle.dump(np.ones((I + 2, 300)), fh)
        file_attr, key = "w2v_pkl", "(array)"
    else:
        write_tiny(tmp_path, **kwargs)
    with pytest.raises(DataError) as err:
        load_benchmark("cub", tmp_path, progress=quiet)
    msg = str(err.value)
    assert str(getattr(benchmark_paths("cub", tmp_path), file_attr)) in msg, msg
    assert f"'{key}'" in msg, msg
    assert "found" in msg and "expected" in msg and "\n" not in msg
    assert not (tmp_path / "CUB" / "cache").exists()  # validation happens before the cache is built


@pytest.mark.parametrize("value, what", [(np.nan, "NaN"), (70000.0, "65504")])
def test_bad_feature_values_stop_the_cache_build(tmp_path, value, what):
    fm = tiny_arrays()["feature_map"].copy()
    fm[30, 1, 0, 1] = value
    write_tiny(tmp_path, hdf5={"feature_map": fm})
    with pytest.raises(DataError, match=what) as err:
        load_benchmark("cub", tmp_path, progress=quiet)
    assert str(benchmark_paths("cub", tmp_path).hdf5) in str(err.value) and "'feature_map'" in str(err.value)
    assert "image 30" in str(err.value)
    assert [p.name for p in (tmp_path / "CUB" / "cache").iterdir()] == ["features_f16.lock"]


# ----------------------------------------------------------------------------- restricted unpickler


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(DataError, match="system") as err:
        load_numpy_pickle(path)
    assert str(path) in str(err.value)
    lst = tmp_path / "list.pkl"
    lst.write_bytes(pickle.dumps([1.0, 2.0]))
    with pytest.raises(DataError, match="numpy array"):
        load_numpy_pickle(lst)


def test_evil_w2v_pickle_stops_loading(tmp_path):
    write_tiny(tmp_path)
    path = benchmark_paths("cub", tmp_path).w2v_pkl
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(DataError, match="refusing") as err:
        load_benchmark("cub", tmp_path, progress=quiet)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------- cache


def test_cache_built_once_region_major_and_reused(tmp_path):
    a = write_tiny(tmp_path)
    lines: list[str] = []
    b1 = load_benchmark("cub", tmp_path, progress=lines.append)
    cache = Path(b1.features.filename)
    assert any("building float16 feature cache" in line for line in lines)
    mtime = cache.stat().st_mtime_ns
    lines.clear()
    b2 = load_benchmark("cub", tmp_path, progress=lines.append)
    assert Path(b2.features.filename) == cache and cache.stat().st_mtime_ns == mtime
    assert not any("building" in line for line in lines)
    assert b2.features.dtype == np.float16 and not b2.features.flags.writeable
    expected = a["feature_map"].reshape(-1, C, H * W).transpose(0, 2, 1)
    np.testing.assert_allclose(np.asarray(b2.features, np.float32), expected, rtol=1e-3, atol=1e-3)
    assert sorted(p.name for p in cache.parent.iterdir()) == sorted([cache.name, sidecar_path(cache).name,
                                                                     "features_f16.lock"])


def test_changed_source_rebuilds_and_interrupted_build_is_cleaned(tmp_path):
    write_tiny(tmp_path)
    old = Path(load_benchmark("cub", tmp_path, progress=quiet).features.filename)
    leftover = old.parent / "features_f16_deadbeef.tmp-99999.npy"
    leftover.write_bytes(b"half")
    fm = tiny_arrays()["feature_map"] * 2
    write_tiny(tmp_path, hdf5={"feature_map": fm})
    os.utime(benchmark_paths("cub", tmp_path).hdf5, ns=(1, 10**18))  # a distinct mtime even on coarse clocks
    b = load_benchmark("cub", tmp_path, progress=quiet)
    new = Path(b.features.filename)
    assert new != old and not old.exists() and not leftover.exists()
    np.testing.assert_allclose(np.asarray(b.features[3], np.float32), fm[3].reshape(C, -1).T, rtol=1e-3)


def test_block_hasher_matches_hashing_each_block_whole():
    data = np.random.default_rng(0).bytes(5 * 1000 + 123)
    hasher = _BlockHasher(block=1000)
    for start in range(0, len(data), 337):  # pieces that straddle block boundaries
        hasher.update(data[start:start + 337])
    import hashlib
    assert hasher.finish() == [hashlib.sha256(data[i:i + 1000]).hexdigest() for i in range(0, len(data), 1000)]


def _garble(path: Path, offset: int, n: int = 64) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * n)  # 0xffff is a float16 NaN


def test_damaged_cache_is_named_and_rebuilt(tmp_path):
    """Same size, garbage inside: the open-time check names the file and rebuilds it (a derived file)."""
    write_tiny(tmp_path)
    cache = Path(load_benchmark("cub", tmp_path, progress=quiet).features.filename)
    good = cache.read_bytes()
    _garble(cache, len(good) - 100)
    assert "block 0" in cache_problem(cache, (K * N_PER_CLASS, C, H, W))
    lines: list[str] = []
    b = load_benchmark("cub", tmp_path, progress=lines.append)
    assert any(str(cache) in line and "does not match the digest" in line and "rebuilding" in line for line in lines)
    assert cache.read_bytes() == good and np.isfinite(np.asarray(b.features, np.float32)).all()


@pytest.mark.parametrize("damage", ["no sidecar", "truncated", "sidecar garbage"])
def test_cache_without_a_trustworthy_sidecar_is_rebuilt(tmp_path, damage):
    write_tiny(tmp_path)
    cache = Path(load_benchmark("cub", tmp_path, progress=quiet).features.filename)
    good = cache.read_bytes()
    if damage == "no sidecar":  # an interrupted build, or one by an older version
        sidecar_path(cache).unlink()
    elif damage == "truncated":
        cache.write_bytes(good[:-10])
    else:
        sidecar_path(cache).write_text("{not json")
    lines: list[str] = []
    load_benchmark("cub", tmp_path, progress=lines.append)
    assert any("rebuilding" in line for line in lines) and cache.read_bytes() == good


def test_full_verification_reads_every_block(tmp_path, monkeypatch):
    """The cheap check samples blocks; verify_cache=True reads them all and catches damage in the middle."""
    import msdn.data.cache as cache_mod
    monkeypatch.setattr(cache_mod, "DIGEST_BLOCK_BYTES", 64)  # a tiny cache, many blocks
    monkeypatch.setattr(cache_mod, "SPOT_CHECKS", 0)
    write_tiny(tmp_path)
    cache = Path(load_benchmark("cub", tmp_path, progress=quiet).features.filename)
    offset = np.load(cache, mmap_mode="r").offset
    _garble(cache, offset + 64 * 5 + 3, n=2)  # block 5: neither the first nor the last
    shape = (K * N_PER_CLASS, C, H, W)
    assert cache_problem(cache, shape) is None
    assert "block 5 of its data" in cache_problem(cache, shape, full=True)
    lines: list[str] = []
    load_benchmark("cub", tmp_path, progress=lines.append, verify_cache=True)
    assert any("block 5" in line for line in lines) and cache_problem(cache, shape, full=True) is None


def test_damaged_cache_in_a_read_only_folder_is_refused(tmp_path, monkeypatch):
    write_tiny(tmp_path)
    cache = Path(load_benchmark("cub", tmp_path, progress=quiet).features.filename)
    _garble(cache, cache.stat().st_size - 100)

    def read_only(self, *args, **kwargs):  # what a read-only folder does (chmod does not stop root)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(DataError, match="cannot be rebuilt") as err:
        load_benchmark("cub", tmp_path, progress=quiet)
    assert str(cache) in str(err.value) and "does not match the digest" in str(err.value)


def test_read_rows_names_a_non_finite_row(tmp_path):
    path = tmp_path / "features_f16_x.npy"
    feats = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(10, 3, 4))
    feats[:] = 1.0
    feats[7, 2, 1] = np.inf
    feats.flush()
    mapped = np.load(path, mmap_mode="r")
    assert read_rows(mapped, np.array([3, 1])).shape == (2, 3, 4)
    with pytest.raises(DataError) as err:
        read_rows(mapped, np.array([2, 7, 0]))
    assert str(path) in str(err.value) and "image 7" in str(err.value) and "msdn.data.verify" in str(err.value)
    with pytest.raises(DataError, match="the feature array: image 1 "):
        read_rows(np.array([[0.0], [np.nan]], dtype=np.float32), np.array([1]))


def _load_cache_path(root: str) -> str:
    return str(load_benchmark("cub", root, progress=None).features.filename)


def test_two_processes_building_at_once_share_one_cache(tmp_path):
    write_tiny(tmp_path)
    with mp.get_context("fork").Pool(2) as pool:
        paths = pool.map(_load_cache_path, [str(tmp_path)] * 2)
    assert paths[0] == paths[1]
    assert len(list((tmp_path / "CUB" / "cache").glob("*.npy"))) == 1


# ----------------------------------------------------------------------------- the real xlsa17 split files

REAL = {  # trainval, test_seen, test_unseen, seen, unseen, attributes, val-protocol train + val classes
    "cub": (7057, 1764, 2967, 150, 50, 312, 100, 50),
    "sun": (10320, 2580, 1440, 645, 72, 102, 580, 65),
    "awa2": (23527, 5882, 7913, 40, 10, 85, 27, 13),
}


@pytest.fixture(scope="module", params=sorted(REAL))
def real_bench(request, tmp_path_factory):
    """A data root with the real labels, splits, attributes and word vectors and a tiny fake feature_map."""
    if not REALDATA.is_dir():
        pytest.skip(f"real split files not found at {REALDATA} (expected ../shared/realdata next to the repo)")
    ds = request.param
    src = REALDATA / ds.upper()
    root = tmp_path_factory.mktemp(f"real_{ds}")
    p = benchmark_paths(ds, root)
    for path in (p.hdf5, p.att_splits, p.w2v_pkl):
        path.parent.mkdir(parents=True, exist_ok=True)
    p.att_splits.symlink_to(src / "att_splits.mat")  # read in place, never copied
    p.w2v_pkl.symlink_to(src / f"{ds.upper()}_attribute.pkl")
    mat = scipy.io.loadmat(src / "att_splits.mat")
    labels = np.load(src / "labels.npy")
    with h5py.File(p.hdf5, "w") as f:
        f["feature_map"] = np.random.default_rng(0).random((labels.size, 4, 1, 1), dtype=np.float32)
        f["labels"] = labels
        for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc"):
            f[key] = mat[key].reshape(-1).astype(np.int64) - 1
        f["att"] = mat["att"].T
        f["original_att"] = mat["original_att"].T
    return ds, load_benchmark(ds, root, progress=quiet)


def test_real_counts(real_bench):
    ds, b = real_bench
    tv, ts, tu, n_seen, n_unseen, n_att, _, _ = REAL[ds]
    assert (b.trainval_loc.size, b.test_seen_loc.size, b.test_unseen_loc.size) == (tv, ts, tu)
    s = make_split(b, "paper")
    assert (int(s.seen.sum()), int((~s.seen).sum())) == (n_seen, n_unseen)
    assert b.att.shape == (n_seen + n_unseen, n_att) and b.w2v_att.shape == (n_att, 300)
    assert len(b.class_names) == n_seen + n_unseen
    assert b.features.shape == (tv + ts + tu, 1, 4)
    assert (b.train_loc is None) == (ds == "cub")  # the CUB copy lacks train_loc/val_loc
    if ds == "awa2":
        assert b.att.min() == 0.0  # four negative predicate values clamped
    if ds == "cub":
        assert b.class_names[0] == "002.Laysan_Albatross"


def test_real_val_split_never_uses_test_images(real_bench):
    ds, b = real_bench
    n_train, n_val = REAL[ds][6:]
    s = make_split(b, "val", seed=0)
    assert (int(s.seen.sum()), int((~s.seen).sum())) == (n_train, n_val)
    used = np.concatenate([s.train_idx, s.eval_seen_idx, s.eval_unseen_idx])
    assert np.unique(used).size == used.size
    assert not np.isin(used, np.concatenate([b.test_seen_loc, b.test_unseen_loc])).any()
    assert np.isin(used, b.trainval_loc).all()
    train_classes = np.unique(b.labels[s.train_idx])
    assert not np.isin(np.unique(b.labels[s.eval_unseen_idx]), train_classes).any()
    assert np.array_equal(np.unique(b.labels[s.eval_seen_idx]), train_classes)  # >= 1 held out per class
    assert np.array_equal(s.class_ids[s.seen], train_classes)
    assert (s.labels[used] >= 0).all() and np.array_equal(s.class_ids[s.labels[used]], b.labels[used])
    assert ("seed 0" in s.note) == (ds == "cub")


def test_real_val_split_deterministic_for_a_seed(real_bench):
    _, b = real_bench
    s0, again, s1 = make_split(b, "val", seed=0), make_split(b, "val", seed=0), make_split(b, "val", seed=1)
    for field in ("class_ids", "seen", "train_idx", "eval_seen_idx", "eval_unseen_idx", "labels"):
        assert np.array_equal(getattr(s0, field), getattr(again, field))
    assert not np.array_equal(s0.eval_seen_idx, s1.eval_seen_idx)


def test_real_pickles_load_with_the_restricted_unpickler():
    if not REALDATA.is_dir():
        pytest.skip(f"real split files not found at {REALDATA}")
    for ds, n_att in (("CUB", 312), ("SUN", 102), ("AWA2", 85)):
        w2v = load_numpy_pickle(REALDATA / ds / f"{ds}_attribute.pkl")
        assert w2v.shape == (n_att, 300) and w2v.dtype == np.float64
    assert not load_numpy_pickle(REALDATA / "SUN" / "SUN_attribute.pkl")[88].any()  # 'man-made' is all zeros
