"""Format readers and value validators shared by the data layer and msdn.prepare.

MATLAB v5 files (xlsa17), MATLAB cell arrays of strings, index vectors (0- or 1-based), numeric
matrices, and word-vector files (.npy, or a pickle read with an unpickler that accepts plain numpy
arrays only: a pickle can run arbitrary code). Every problem is a DataError naming file and key.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DataError, fail

# ----------------------------------------------------------------------------- validators


def as_vector(arr: Any, path: Path, key: str) -> np.ndarray:
    """Squeeze an (n,), (n,1) or (1,n) array to (n,); anything else is an error."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise fail(path, key, f"an array of shape {arr.shape}", "a vector of shape (n,) or (n, 1)")
    return arr


def as_index(arr: Any, path: Path, key: str, n: int | None, *, one_based: bool,
             what: str = "images") -> np.ndarray:
    """Validate an index vector into n `what` (range, integrality); return it 0-based as int64. n=None: no bound."""
    arr = as_vector(arr, path, key)
    if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.all(np.isfinite(arr))):
        raise fail(path, key, f"dtype {arr.dtype}", "integer indices")
    idx = arr.astype(np.int64)
    if arr.dtype.kind == "f" and not np.array_equal(idx, arr):
        raise fail(path, key, "non-integer values", "integer indices")
    lo = 1 if one_based else 0
    hi = np.iinfo(np.int64).max if n is None else (n if one_based else n - 1)
    base = "1-based (MATLAB)" if one_based else "0-based"
    if idx.size and (idx.min() < lo or idx.max() > hi):
        bad = idx[(idx < lo) | (idx > hi)]
        span = f">= {lo}" if n is None else f"in [{lo}, {hi}] for {n} {what}"
        raise fail(path, key, f"{bad.size} out-of-range value(s), e.g. {bad[0]} (min {idx.min()}, max {idx.max()})",
                   f"{base} indices {span}")
    return idx - 1 if one_based else idx


def check_finite(arr: np.ndarray, path: Path, key: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise fail(path, key, f"{int(bad.sum())} NaN/Inf value(s), first at index {where}", "finite values")


def check_matrix(arr: Any, path: Path, key: str) -> np.ndarray:
    """A finite 2-D numeric matrix, unchanged; DataError otherwise."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.dtype.kind not in "iuf":
        raise fail(path, key, f"{arr.dtype} array of shape {arr.shape}", "a 2-D numeric matrix")
    check_finite(arr, path, key)
    return arr


# ----------------------------------------------------------------------------- MATLAB files


def loadmat(path: Path, keys: Sequence[str], *, required: bool = False) -> dict[str, Any]:
    """Load only `keys` from a MATLAB v5 file; other variables (e.g. features) stay on disk.

    Keys absent from the file are absent from the result, unless `required`: then they are a DataError.
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=list(keys))
    except Exception as exc:
        raise DataError(f"{path}: cannot read as a MATLAB .mat file ({type(exc).__name__}: {exc}); expected the "
                        "xlsa17 file as written by MATLAB or scipy.io.savemat (v5)") from None
    if required:
        for key in keys:
            if key not in mat:
                raise fail(path, key, "no such variable", f"the xlsa17 file's {key}")
    return mat


def cell_strings(cell: Any, path: Path, key: str) -> tuple[str, ...]:
    """A MATLAB (K,1) cell of strings -> tuple of str (an empty cell gives '')."""
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
            raise fail(path, key, f"an entry of type {type(item).__name__} ({item!r:.60})",
                       "a cell array of strings")
    return tuple(out)


# ----------------------------------------------------------------------------- numpy files


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


def read_vector_file(path: Path) -> np.ndarray:
    """Word vectors from a plain .npy array or (any other suffix) a pickled numpy array."""
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{path}: cannot read as a plain .npy array ({exc}); expected a numeric I x 300 "
                            "array saved with numpy.save") from None
    return load_numpy_pickle(path)
