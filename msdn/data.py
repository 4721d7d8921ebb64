"""Benchmarks on disk -> validated arrays + a shared float16 feature cache.

Reads the layout of the authors' pipeline under ``--data-root DIR`` (see docs/data.md):

    DIR/<DS>/feature_map_ResNet_101_<DS>.hdf5      feature maps N x C x H x W, labels, locs, att, w2v_att
    DIR/xlsa17/data/<DS>/att_splits.mat            xlsa17 splits (1-based), incl. train_loc / val_loc
    DIR/xlsa17/data/<DS>/res101.mat                optional: labels cross-check
    DIR/w2v/<DS>_attribute.pkl (or .npy)           optional: attribute word vectors I x 300

Everything is validated before any expensive work; the feature maps are then converted once into
``DIR/<DS>/cache/features_f16_<key>.npy`` (float16, region-major N x R x C) and memory-mapped, so
many processes (Ray Tune trials) share one copy in the page cache.

    from msdn.data import load_benchmark, make_split
    bench = load_benchmark("synthetic", "data")      # generated on first use
    split = make_split(bench, "val", seed=0)
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

DATASET_DIRS = {"cub": "CUB", "sun": "SUN", "awa2": "AWA2", "synthetic": "SYNTHETIC"}
# xlsa17's validation classes among the seen classes (val of seen); used when train_loc/val_loc are absent.
XLSA17_VAL_CLASSES = {"cub": (50, 150), "sun": (65, 645), "awa2": (13, 40)}
FLOAT16_MAX = 65504.0
CACHE_CHUNK_BYTES = 256 * 2**20  # float32 bytes read from the HDF5 per cache-building step
CACHE_CHUNK_MAX = 512  # images per step at most
LOC_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")

Progress = Callable[[str], None] | None


class DataError(ValueError):
    """A benchmark file is missing or does not hold what MSDN expects; the message says what and where."""


@dataclass(frozen=True)
class Benchmark:
    """One ZSL benchmark: cached region features plus validated metadata (all indices 0-based)."""

    name: str
    features: np.ndarray  # (N, R, C) float16 read-only memmap, region-major
    labels: np.ndarray  # (N,) int64
    att: np.ndarray  # (K, I) float32 (AWA2: negatives clamped to 0)
    w2v_att: np.ndarray  # (I, D) float32, not normalised
    trainval_loc: np.ndarray
    test_seen_loc: np.ndarray
    test_unseen_loc: np.ndarray
    train_loc: np.ndarray | None
    val_loc: np.ndarray | None
    class_names: tuple[str, ...]
    feature_shape: tuple[int, int]  # (R, C)

    @property
    def num_classes(self) -> int:
        return self.att.shape[0]

    @property
    def seen_classes(self) -> np.ndarray:
        """Sorted global ids of the classes that have trainval images."""
        return np.unique(self.labels[self.trainval_loc])


@dataclass(frozen=True)
class ZSLSplit:
    """Which classes compete and which images train / evaluate, for one protocol."""

    protocol: str
    class_ids: np.ndarray  # (K',) global ids of the candidate classes
    seen: np.ndarray  # (K',) bool
    att: np.ndarray  # (K', I) float32
    train_idx: np.ndarray
    eval_seen_idx: np.ndarray
    eval_unseen_idx: np.ndarray
    labels: np.ndarray  # (N,) int64 in 0..K'-1, -1 for images of non-candidate classes
    note: str


@dataclass(frozen=True)
class BenchmarkPaths:
    """Where each file of one benchmark lives under a data root."""

    hdf5: Path
    att_splits: Path
    res101: Path
    w2v_pkl: Path
    w2v_npy: Path
    cache_dir: Path


# ----------------------------------------------------------------------------- paths and presence


def _dataset_dir_name(dataset: str) -> str:
    if dataset not in DATASET_DIRS:
        raise DataError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASET_DIRS)} "
                        "(cub, sun and awa2 need the files described in docs/data.md; synthetic is generated "
                        "on first use and needs no download).")
    return DATASET_DIRS[dataset]


def data_dir(dataset: str, data_root: str | Path) -> Path:
    """The folder holding the HDF5 feature maps (and the cache) of `dataset`: DATA_ROOT/<DS>."""
    return Path(data_root) / _dataset_dir_name(dataset)


def benchmark_paths(dataset: str, data_root: str | Path) -> BenchmarkPaths:
    """All file locations of `dataset` under `data_root`, present or not."""
    ds = _dataset_dir_name(dataset)
    root = Path(data_root)
    xlsa = root / "xlsa17" / "data" / ds
    return BenchmarkPaths(
        hdf5=root / ds / f"feature_map_ResNet_101_{ds}.hdf5",
        att_splits=xlsa / "att_splits.mat",
        res101=xlsa / "res101.mat",
        w2v_pkl=root / "w2v" / f"{ds}_attribute.pkl",
        w2v_npy=root / "w2v" / f"{ds}_attribute.npy",
        cache_dir=root / ds / "cache",
    )


def _missing_data_message(dataset: str, data_root: str | Path, missing: Path) -> str:
    p = benchmark_paths(dataset, data_root)
    ds = DATASET_DIRS[dataset]
    return (
        f"The {dataset} benchmark is not under data root {Path(data_root)}: {missing} does not exist.\n"
        "MSDN trains on precomputed ResNet-101 feature maps and the xlsa17 proposed splits. Put the files here:\n"
        f"  {p.hdf5}\n"
        "      required: datasets feature_map (N x 2048 x 14 x 14 float32), labels, trainval_loc, test_seen_loc,\n"
        "      test_unseen_loc (0-based), att, original_att (K x I), w2v_att (I x 300)\n"
        f"  {p.att_splits}\n"
        "      xlsa17 proposed splits (1-based locs, att I x K, train_loc/val_loc); gives --protocol val its\n"
        "      validation classes (without it they are drawn by seed)\n"
        f"  {p.res101}\n"
        "      optional, xlsa17: image labels, cross-checked against the HDF5\n"
        f"  {p.w2v_pkl}  (or .npy)\n"
        "      optional: attribute word vectors I x 300, used if the HDF5 has no w2v_att\n"
        "How to get them: download the xlsa17 proposed splits (Xian et al., 'Zero-Shot Learning - the Good, the "
        "Bad and the Ugly', MPI-INF) and the original images, then extract the feature maps with "
        f"`python -m msdn.prepare {dataset} --images IMAGES --xlsa17 XLSA17 --out {Path(data_root)}` or with the "
        "authors' TransZero/MSDN preprocessing (preprocessing.py), which writes "
        f"feature_map_ResNet_101_{ds}.hdf5. To try everything without any download, use --dataset synthetic."
    )


def check_data_present(dataset: str, data_root: str | Path) -> None:
    """Cheap existence check (no file is opened); raises DataError with instructions when data is missing.

    The synthetic benchmark is generated on first use, so it always passes.
    """
    _dataset_dir_name(dataset)
    if dataset == "synthetic":
        return
    hdf5 = benchmark_paths(dataset, data_root).hdf5
    if not hdf5.is_file():
        raise DataError(_missing_data_message(dataset, data_root, hdf5))


# ----------------------------------------------------------------------------- small validators


def _fail(path: Path, key: str, found: str, expected: str, hint: str = "") -> DataError:
    msg = f"{path}: key '{key}': found {found}; expected {expected}."
    return DataError(msg + (f" {hint}" if hint else ""))


def _as_vector(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Squeeze an (n,), (n,1) or (1,n) array to (n,); anything else is an error."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise _fail(path, key, f"an array of shape {arr.shape}", "a vector of shape (n,) or (n, 1)")
    return arr


def _as_index(arr: np.ndarray, path: Path, key: str, n: int | None, *, one_based: bool) -> np.ndarray:
    """Validate an index vector (range, integrality) and return it 0-based as int64; n=None: no upper bound."""
    arr = _as_vector(arr, path, key)
    if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.all(np.isfinite(arr))):
        raise _fail(path, key, f"dtype {arr.dtype}", "integer indices")
    idx = arr.astype(np.int64)
    if arr.dtype.kind == "f" and not np.array_equal(idx, arr):
        raise _fail(path, key, "non-integer values", "integer indices")
    lo = 1 if one_based else 0
    hi = np.iinfo(np.int64).max if n is None else (n if one_based else n - 1)
    base = "1-based (MATLAB)" if one_based else "0-based"
    if idx.size and (idx.min() < lo or idx.max() > hi):
        bad = idx[(idx < lo) | (idx > hi)]
        span = f">= {lo}" if n is None else f"in [{lo}, {hi}] for {n} images"
        raise _fail(path, key, f"{bad.size} out-of-range value(s), e.g. {bad[0]} (min {idx.min()}, max {idx.max()})",
                    f"{base} indices {span}")
    return idx - 1 if one_based else idx


def _check_finite(arr: np.ndarray, path: Path, key: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise _fail(path, key, f"{int(bad.sum())} NaN/Inf value(s), first at index {where}", "finite values")


def _check_matrix(arr: Any, path: Path, key: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.dtype.kind not in "iuf":
        raise _fail(path, key, f"{arr.dtype} array of shape {arr.shape}", "a 2-D numeric matrix")
    _check_finite(arr, path, key)
    return arr


# ----------------------------------------------------------------------------- file readers


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses every other global (a pickle can run arbitrary code)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"{self.path}: refusing to unpickle global '{module}.{name}'; expected a pickle of a "
                            "plain numeric numpy array (allowed globals: numpy _reconstruct, ndarray, dtype, "
                            "scalar). Convert the file to .npy or re-save it with pickle.dump(numpy_array).")
        # Resolve via numpy._core directly: numpy.core is a deprecated alias in numpy 2.
        if module.startswith("numpy.core") or module.startswith("numpy._core"):
            from numpy._core import multiarray  # type: ignore[attr-defined]
            return getattr(multiarray, name)
        return getattr(np, name)


def load_numpy_pickle(path: str | Path) -> np.ndarray:
    """Load a pickle that holds one numeric numpy array, refusing anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc}); expected a pickle of a numeric "
                        "numpy array") from None
    if not isinstance(obj, np.ndarray) or obj.dtype.kind not in "iuf":
        kind = type(obj).__name__ + (f" of dtype {obj.dtype}" if isinstance(obj, np.ndarray) else "")
        raise DataError(f"{path}: the pickle holds a {kind}; expected a numeric numpy array")
    return obj


def _load_word_vectors(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{path}: cannot read as a plain .npy array ({exc}); expected a numeric I x 300 "
                            "array saved with numpy.save") from None
    return load_numpy_pickle(path)


def _loadmat(path: Path, keys: list[str]) -> dict[str, Any]:
    """Load only `keys` (those present) from a MATLAB v5 file; other variables (e.g. features) stay on disk."""
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), variable_names=keys)
    except Exception as exc:
        raise DataError(f"{path}: cannot read as a MATLAB .mat file ({type(exc).__name__}: {exc}); expected the "
                        "xlsa17 file as written by MATLAB or scipy.io.savemat (v5)") from None


def _cell_strings(cell: np.ndarray, path: Path, key: str) -> tuple[str, ...]:
    """A MATLAB (K,1) cell of strings -> tuple of str."""
    arr = np.asarray(cell)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    out = []
    for item in arr:
        v = np.asarray(item).reshape(-1)
        if v.size == 1 and isinstance(v[0], str):
            out.append(str(v[0]))
        elif v.size == 0:
            out.append("")
        elif isinstance(item, str):
            out.append(item)
        else:
            raise _fail(path, key, f"an entry of type {type(item).__name__}", "a cell array of strings")
    return tuple(out)


@dataclass
class _Meta:
    """Validated metadata read from the HDF5 (and the optional xlsa17 / w2v files)."""

    shape: tuple[int, int, int, int]  # N, C, H, W
    labels: np.ndarray
    att: np.ndarray
    w2v_att: np.ndarray
    locs: dict[str, np.ndarray]
    train_loc: np.ndarray | None
    val_loc: np.ndarray | None
    class_names: tuple[str, ...] | None


def _read_hdf5_meta(path: Path) -> _Meta:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot open as HDF5 ({exc}); expected the feature file written by the authors' "
                        "preprocessing or msdn.prepare") from None
    with f:
        def get(key: str, required: bool = True):
            if key not in f:
                if not required:
                    return None
                raise _fail(path, key, f"no such dataset (present: {', '.join(sorted(f.keys())) or 'none'})",
                            "the key written by the authors' preprocessing")
            if not isinstance(f[key], h5py.Dataset):
                raise _fail(path, key, "a group", "a dataset")
            return f[key]

        fm = get("feature_map")
        if fm.ndim != 4 or fm.dtype.kind != "f":
            raise _fail(path, "feature_map", f"{fm.dtype} array of shape {fm.shape}",
                        "a float array N x C x H x W (e.g. N x 2048 x 14 x 14)")
        shape = tuple(int(s) for s in fm.shape)
        n = shape[0]
        labels = _as_vector(get("labels")[()], path, "labels")
        if labels.shape[0] != n:
            raise _fail(path, "labels", f"{labels.shape[0]} labels", f"one per image of feature_map ({n})")
        labels = _as_index(labels, path, "labels", None, one_based=False)
        locs = {k: _as_index(get(k)[()], path, k, n, one_based=False) for k in LOC_KEYS}
        att = _check_matrix(get("att")[()], path, "att")
        w2v = get("w2v_att", required=False)
        w2v = None if w2v is None else _check_matrix(w2v[()], path, "w2v_att")
    return _Meta(shape=shape, labels=labels, att=att, w2v_att=w2v, locs=locs,  # type: ignore[arg-type]
                 train_loc=None, val_loc=None, class_names=None)


def _check_splits(meta: _Meta, path: Path) -> None:
    """Class counts and the disjointness of trainval / test_seen / test_unseen."""
    k = meta.att.shape[0]
    n_cls = int(meta.labels.max()) + 1 if meta.labels.size else 0
    if n_cls != k:
        raise _fail(path, "att", f"{k} class rows", f"one row per class, i.e. max label + 1 = {n_cls} rows "
                    "(labels are 0-based class ids)")
    for key, idx in meta.locs.items():
        if np.unique(idx).size != idx.size:
            raise _fail(path, key, f"{idx.size - np.unique(idx).size} duplicated image index(es)", "unique indices")
    keys = list(meta.locs)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            common = np.intersect1d(meta.locs[a], meta.locs[b])
            if common.size:
                raise _fail(path, f"{a}/{b}", f"{common.size} image(s) in both, e.g. index {common[0]}",
                            "disjoint image sets")
    seen = np.unique(meta.labels[meta.locs["trainval_loc"]])
    unseen = np.unique(meta.labels[meta.locs["test_unseen_loc"]])
    both = np.intersect1d(seen, unseen)
    if both.size:
        raise _fail(path, "test_unseen_loc", f"{both.size} class(es) that also have trainval images, e.g. "
                    f"class {both[0]}", "unseen classes disjoint from the trainval (seen) classes")
    extra = np.setdiff1d(np.unique(meta.labels[meta.locs["test_seen_loc"]]), seen)
    if extra.size:
        raise _fail(path, "test_seen_loc", f"{extra.size} class(es) without trainval images, e.g. class {extra[0]}",
                    "test-seen images of seen (trainval) classes only")


def _read_att_splits(path: Path, meta: _Meta, hdf5: Path) -> None:
    """Cross-check xlsa17 att_splits.mat against the HDF5; take train_loc/val_loc and class names from it."""
    keys = ["att", "allclasses_names", *LOC_KEYS, "train_loc", "val_loc"]
    mat = _loadmat(path, keys)
    n = meta.shape[0]
    k, i = meta.att.shape
    if "att" in mat:
        att = _check_matrix(mat["att"], path, "att")
        if att.shape != (i, k):
            raise _fail(path, "att", f"shape {att.shape}", f"attributes x classes = ({i}, {k}), the transpose of "
                        f"the HDF5 att of {hdf5}")
        if not np.allclose(att.T, meta.att, rtol=1e-4, atol=1e-5):
            diff = float(np.max(np.abs(att.T - meta.att)))
            raise _fail(path, "att", f"values that differ from the HDF5 att (max abs diff {diff:.3g})",
                        f"the transpose of att in {hdf5}")
    for key in LOC_KEYS:
        if key not in mat:
            raise _fail(path, key, "no such variable", "the xlsa17 1-based image indices")
        loc = _as_index(mat[key], path, key, n, one_based=True)
        if not np.array_equal(np.sort(loc), np.sort(meta.locs[key])):
            differ = np.setxor1d(loc, meta.locs[key])
            raise _fail(path, key, f"{loc.size} indices that, minus 1, disagree with {key} of {hdf5} "
                        f"({meta.locs[key].size} indices; {differ.size} differ, e.g. 0-based {differ[0]})",
                        "the same images in both files (mat = HDF5 + 1)")
    for key in ("train_loc", "val_loc"):
        if key in mat:
            setattr(meta, key, _as_index(mat[key], path, key, n, one_based=True))
    if (meta.train_loc is None) != (meta.val_loc is None):
        present = "train_loc" if meta.train_loc is not None else "val_loc"
        raise _fail(path, "train_loc/val_loc", f"only {present}", "both train_loc and val_loc, or neither")
    if "allclasses_names" in mat:
        names = _cell_strings(mat["allclasses_names"], path, "allclasses_names")
        if len(names) != k:
            raise _fail(path, "allclasses_names", f"{len(names)} names", f"one per class ({k}, the rows of the "
                        f"HDF5 att)")
        meta.class_names = names


def _check_res101(path: Path, meta: _Meta, hdf5: Path) -> None:
    mat = _loadmat(path, ["labels"])
    if "labels" not in mat:
        raise _fail(path, "labels", "no such variable", "the xlsa17 1-based image labels (N, 1)")
    labels = _as_vector(mat["labels"], path, "labels")
    if labels.shape[0] != meta.shape[0]:
        raise _fail(path, "labels", f"{labels.shape[0]} labels", f"{meta.shape[0]}, the images in {hdf5}")
    labels = _as_index(labels, path, "labels", meta.att.shape[0], one_based=True)
    if not np.array_equal(labels, meta.labels):
        bad = int(np.flatnonzero(labels != meta.labels)[0])
        raise _fail(path, "labels", f"{int((labels != meta.labels).sum())} labels that disagree with {hdf5} "
                    f"(first at image {bad}: class {labels[bad]} here, 0-based, vs class {meta.labels[bad]} there)",
                    "res101 labels = HDF5 labels + 1")


def _resolve_w2v(meta: _Meta, paths: BenchmarkPaths) -> None:
    """Word vectors from the HDF5, else from the pkl/npy; when both exist they must agree."""
    i = meta.att.shape[1]
    source = paths.hdf5
    for file in (paths.w2v_pkl, paths.w2v_npy):
        if not file.is_file():
            continue
        w2v = _check_matrix(_load_word_vectors(file), file, "(array)")
        if w2v.shape[0] != i:
            raise _fail(file, "(array)", f"{w2v.shape[0]} rows (shape {w2v.shape})",
                        f"one row per attribute, i.e. {i} = the columns of att in {paths.hdf5}")
        if meta.w2v_att is None:
            meta.w2v_att, source = w2v, file
        elif meta.w2v_att.shape != w2v.shape or not np.allclose(meta.w2v_att, w2v, rtol=1e-4, atol=1e-5):
            raise _fail(file, "(array)", f"word vectors of shape {w2v.shape} that differ from w2v_att in {paths.hdf5}",
                        "the same vectors as the HDF5 (or remove one of them)")
        break
    if meta.w2v_att is None:
        raise _fail(paths.hdf5, "w2v_att", "no such dataset and no word-vector file",
                    f"w2v_att (I x 300) in the HDF5, or {paths.w2v_pkl} / {paths.w2v_npy}")
    if meta.w2v_att.shape[0] != i:
        raise _fail(source, "w2v_att", f"{meta.w2v_att.shape[0]} rows (shape {meta.w2v_att.shape})",
                    f"one row per attribute, i.e. {i} = the columns of att")


def read_rows(features: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` of a (memory-mapped) feature array, in the order of `idx`.

    Reads in sorted order, which a memmap serves with fewer page faults, then puts the rows back.
    """
    idx = np.asarray(idx)
    order = np.argsort(idx)
    rows = np.empty((idx.size, *features.shape[1:]), dtype=features.dtype)
    rows[order] = features[idx[order]]
    return rows


# ----------------------------------------------------------------------------- the float16 cache


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock: a second process waits here until the first has finished."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cache_path(hdf5: Path, cache_dir: Path) -> Path:
    """Cache file name keyed by the source's size and mtime, so a replaced HDF5 is converted again."""
    st = hdf5.stat()
    key = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / f"features_f16_{key}.npy"


def _build_cache(hdf5: Path, final: Path, shape: tuple[int, int, int, int], progress: Progress) -> None:
    """Convert feature_map (N, C, H, W) float32 -> (N, H*W, C) float16, chunk by chunk, then rename atomically."""
    import h5py

    n, c, h, w = shape
    r = h * w
    chunk = max(1, min(CACHE_CHUNK_MAX, CACHE_CHUNK_BYTES // max(1, c * r * 4)))
    tmp = final.with_name(f"{final.stem}.tmp-{os.getpid()}.npy")
    say = progress or (lambda _msg: None)
    say(f"building float16 feature cache {final} from {hdf5} ({n} images, {c}x{h}x{w} -> {r}x{c}, "
        f"{n * r * c * 2 / 2**30:.2f} GiB)")
    start = time.perf_counter()
    last_report = start
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, r, c))
        with h5py.File(hdf5, "r") as f:
            fm = f["feature_map"]
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                block = np.asarray(fm[s:e], dtype=np.float32).reshape(e - s, c, r)
                hi, lo = float(block.max()), float(block.min())
                if not (np.isfinite(hi) and np.isfinite(lo)):
                    bad = np.argwhere(~np.isfinite(block))[0]
                    raise _fail(hdf5, "feature_map", f"NaN/Inf in image {s + int(bad[0])} (channel {int(bad[1])}, "
                                f"region {int(bad[2])})", "finite feature values")
                if max(hi, -lo) > FLOAT16_MAX:
                    bad_img = s + int(np.argmax(np.abs(block).reshape(e - s, -1).max(axis=1)))
                    raise _fail(hdf5, "feature_map", f"a value of {hi if hi > -lo else lo:.6g} (image {bad_img})",
                                f"|values| <= {FLOAT16_MAX:.0f}, the float16 range used by the cache")
                out[s:e] = block.transpose(0, 2, 1)
                now = time.perf_counter()
                if progress and (now - last_report > 10 or e == n):
                    last_report = now
                    say(f"  cache {e}/{n} images ({e / max(now - start, 1e-9):.0f} images/s)")
        out.flush()
        del out
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _open_cache(hdf5: Path, cache_dir: Path, shape: tuple[int, int, int, int], progress: Progress) -> np.ndarray:
    """Memory-map the float16 cache, building it first (once, under a lock) when missing."""
    n, c, h, w = shape
    final = cache_path(hdf5, cache_dir)
    if not final.is_file():
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            lock = cache_dir / "features_f16.lock"
            lock.touch(exist_ok=True)
        except OSError as exc:
            raise DataError(f"{cache_dir}: cannot create the feature cache folder or its lock file ({exc}); "
                            "expected a writable folder next to the HDF5 (or pass cache_dir= to "
                            "load_benchmark)") from None
        with file_lock(lock):
            if not final.is_file():  # another process may have built it while we waited
                for stale in cache_dir.glob("features_f16_*.tmp-*.npy"):
                    stale.unlink(missing_ok=True)  # left by an interrupted build; we hold the lock
                _build_cache(hdf5, final, shape, progress)
                for old in cache_dir.glob("features_f16_*.npy"):
                    if old != final and ".tmp-" not in old.name:
                        old.unlink(missing_ok=True)  # a cache of an older HDF5; open maps keep working
    try:
        feats = np.load(final, mmap_mode="r")
    except ValueError as exc:
        raise DataError(f"{final}: cannot memory-map the feature cache ({exc}); delete it to rebuild") from None
    if feats.shape != (n, h * w, c) or feats.dtype != np.float16:
        raise _fail(final, "(array)", f"{feats.dtype} array of shape {feats.shape}",
                    f"float16 of shape {(n, h * w, c)}; delete the file to rebuild it")
    return feats


# ----------------------------------------------------------------------------- public loading


def load_benchmark(dataset: str, data_root: str | Path, *, progress: Progress = print,
                   cache_dir: str | Path | None = None) -> Benchmark:
    """Validate the files of `dataset` under `data_root` and return the benchmark with cached features.

    All metadata is checked before the (possibly long) float16 cache conversion. `synthetic` is generated
    under `data_root` on first use. `cache_dir` overrides DATA_ROOT/<DS>/cache (e.g. for read-only data).
    """
    _dataset_dir_name(dataset)
    if dataset == "synthetic":
        from msdn.synthetic import ensure_synthetic, synthetic_present

        if not synthetic_present(data_root):  # keep a set generated with another seed (--seed N)
            ensure_synthetic(data_root, progress=progress)
    check_data_present(dataset, data_root)
    paths = benchmark_paths(dataset, data_root)
    meta = _read_hdf5_meta(paths.hdf5)
    _check_splits(meta, paths.hdf5)
    if paths.att_splits.is_file():
        _read_att_splits(paths.att_splits, meta, paths.hdf5)
    elif progress:
        progress(f"{paths.att_splits} not found: the paper protocol works, the val protocol will choose "
                 "validation classes by seed")
    _resolve_w2v(meta, paths)
    if paths.res101.is_file():
        _check_res101(paths.res101, meta, paths.hdf5)

    att = meta.att.astype(np.float32)
    if dataset == "awa2":
        att = np.maximum(att, 0.0)  # the authors clamp AwA2's few negative predicate values
    n, c, h, w = meta.shape
    feats = _open_cache(paths.hdf5, Path(cache_dir) if cache_dir else paths.cache_dir, meta.shape, progress)
    k = att.shape[0]
    names = meta.class_names or tuple(f"class_{j:03d}" for j in range(k))
    return Benchmark(
        name=dataset, features=feats, labels=meta.labels, att=att,
        w2v_att=meta.w2v_att.astype(np.float32), trainval_loc=meta.locs["trainval_loc"],
        test_seen_loc=meta.locs["test_seen_loc"], test_unseen_loc=meta.locs["test_unseen_loc"],
        train_loc=meta.train_loc, val_loc=meta.val_loc, class_names=names, feature_shape=(h * w, c),
    )


# ----------------------------------------------------------------------------- protocols


def _holdout(bench: Benchmark, classes: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the trainval images of `classes` per class into (train, held-out), deterministically."""
    rng = np.random.default_rng([seed, 1])
    tv = bench.trainval_loc
    tv_labels = bench.labels[tv]
    train, held = [], []
    for k in classes:
        imgs = np.sort(tv[tv_labels == k])
        n_hold = 0 if imgs.size < 2 else min(imgs.size - 1, max(1, int(round(fraction * imgs.size))))
        perm = rng.permutation(imgs.size)
        held.append(imgs[perm[:n_hold]])
        train.append(imgs[perm[n_hold:]])
    return _sorted_union(train), _sorted_union(held)


def _sorted_union(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)


def _val_classes(bench: Benchmark, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train classes, validation classes, note) inside the seen classes."""
    seen = bench.seen_classes
    if bench.train_loc is not None and bench.val_loc is not None:
        train_c = np.intersect1d(np.unique(bench.labels[bench.train_loc]), seen)
        val_c = np.intersect1d(np.unique(bench.labels[bench.val_loc]), seen)
        both = np.intersect1d(train_c, val_c)
        if both.size:
            raise DataError(f"the xlsa17 split of {bench.name}: key 'train_loc/val_loc': found {both.size} class(es) "
                            f"with images in both, e.g. class {both[0]}; expected disjoint train and validation "
                            "classes.")
        if not train_c.size or not val_c.size:
            raise DataError(f"the xlsa17 split of {bench.name}: key 'train_loc/val_loc': found {train_c.size} train "
                            f"and {val_c.size} validation classes among the seen classes; expected both non-empty.")
        return train_c, val_c, (f"xlsa17 validation split: {train_c.size} train classes, {val_c.size} validation "
                                "classes (train_loc/val_loc), evaluated on trainval images only")
    if bench.name in XLSA17_VAL_CLASSES:
        n_val_ref, n_seen_ref = XLSA17_VAL_CLASSES[bench.name]
        n_val = int(round(seen.size * n_val_ref / n_seen_ref))
    else:
        n_val = int(round(seen.size / 3))
    n_val = min(max(n_val, 1), seen.size - 1)
    if n_val < 1:
        raise DataError(f"{bench.name}: found {seen.size} seen class(es); expected at least 2 for the val protocol.")
    rng = np.random.default_rng([seed, 0])
    val_c = np.sort(rng.choice(seen, size=n_val, replace=False))
    train_c = np.setdiff1d(seen, val_c)
    note = (f"validation classes chosen by seed {seed} because att_splits.mat has no train_loc/val_loc: "
            f"{train_c.size} train classes, {val_c.size} validation classes")
    return train_c, val_c, note


def make_split(bench: Benchmark, protocol: str = "paper", *, val_fraction: float = 0.2, seed: int = 0,
               progress: Progress = None) -> ZSLSplit:
    """The image/class split of a protocol.

    paper: train on trainval_loc, evaluate on test_seen_loc / test_unseen_loc, all classes compete.
    val:   train classes vs validation classes inside the seen classes; only trainval images are used, so no
           test image is ever touched. val_fraction of each train class's images (>= 1 when it has >= 2) is
           held out as eval_seen; the validation classes' trainval images are eval_unseen.
    """
    k = bench.num_classes
    if protocol == "paper":
        class_ids = np.arange(k, dtype=np.int64)
        return ZSLSplit(
            protocol="paper", class_ids=class_ids, seen=np.isin(class_ids, bench.seen_classes), att=bench.att,
            train_idx=bench.trainval_loc, eval_seen_idx=bench.test_seen_loc, eval_unseen_idx=bench.test_unseen_loc,
            labels=bench.labels, note="xlsa17 proposed split: train on trainval, test on test_seen / test_unseen",
        )
    if protocol != "val":
        raise ValueError(f"unknown protocol {protocol!r}: expected 'paper' or 'val'")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: expected a fraction in (0, 1)")
    train_c, val_c, note = _val_classes(bench, seed)
    if progress:
        progress(f"{bench.name}: {note}")
    class_ids = np.union1d(train_c, val_c).astype(np.int64)
    lut = np.full(k, -1, dtype=np.int64)
    lut[class_ids] = np.arange(class_ids.size)
    train_idx, eval_seen = _holdout(bench, train_c, val_fraction, seed)
    tv = bench.trainval_loc
    eval_unseen = np.sort(tv[np.isin(bench.labels[tv], val_c)]).astype(np.int64)
    return ZSLSplit(
        protocol="val", class_ids=class_ids, seen=np.isin(class_ids, train_c), att=bench.att[class_ids],
        train_idx=train_idx, eval_seen_idx=eval_seen, eval_unseen_idx=eval_unseen, labels=lut[bench.labels],
        note=note,
    )
