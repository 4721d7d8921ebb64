"""The xlsa17 proposed splits (res101.mat, att_splits.mat) -> what the HDF5 needs, in its conventions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import DATASET_DIRS, LOC_KEYS, DataError
from ..data.readers import as_index, cell_strings, loadmat


@dataclass(frozen=True)
class Xlsa17:
    """What the HDF5 needs from xlsa17, in the HDF5 conventions (0-based, K x I)."""

    image_files: tuple[str, ...]
    labels: np.ndarray  # (N,) int64, 0-based
    locs: dict[str, np.ndarray]  # trainval_loc / test_seen_loc / test_unseen_loc, 0-based int64
    att: np.ndarray  # (K, I) float64
    original_att: np.ndarray  # (K, I) float64
    att_splits: Path
    res101: Path


def _xlsa17_files(dataset: str, xlsa17: Path) -> tuple[Path, Path]:
    """att_splits.mat and res101.mat under --xlsa17 (its root, its data/<DS>/, or that folder itself)."""
    ds = DATASET_DIRS[dataset]
    for folder in (xlsa17 / "data" / ds, xlsa17 / ds, xlsa17):
        if (folder / "att_splits.mat").is_file() and (folder / "res101.mat").is_file():
            return folder / "att_splits.mat", folder / "res101.mat"
    raise DataError(f"--xlsa17 {xlsa17}: found no {xlsa17 / 'data' / ds / 'att_splits.mat'} and res101.mat next to "
                    "it; expected the root of the xlsa17 proposed splits (the folder holding data/<DS>/)")


def read_xlsa17(dataset: str, xlsa17: str | Path) -> Xlsa17:
    """Read res101.mat (images, labels) and att_splits.mat (splits, attributes) and check they fit together."""
    splits_path, res_path = _xlsa17_files(dataset, Path(xlsa17))
    res = loadmat(res_path, ["image_files", "labels"], required=True)  # its `features` stay on disk
    files = cell_strings(res["image_files"], res_path, "image_files")
    mat = loadmat(splits_path, ["att", "original_att", *LOC_KEYS], required=True)
    att, original = (np.asarray(mat[k], dtype=np.float64) for k in ("att", "original_att"))
    if att.ndim != 2 or att.shape != original.shape or not np.all(np.isfinite(att)):
        raise DataError(f"{splits_path}: keys 'att'/'original_att': found shapes {att.shape} / {original.shape}; "
                        "expected two finite attributes x classes matrices of one shape")
    k = att.shape[1]
    labels = as_index(res["labels"], res_path, "labels", k, one_based=True, what="classes")
    if labels.size != len(files):
        raise DataError(f"{res_path}: found {labels.size} labels and {len(files)} image_files; expected one label "
                        "per image")
    if labels.max() + 1 != k:
        raise DataError(f"{res_path}: key 'labels': found max label {labels.max() + 1}; expected {k}, the classes "
                        f"(columns of att) in {splits_path}")
    n = labels.size
    locs = {key: as_index(mat[key], splits_path, key, n, one_based=True) for key in LOC_KEYS}
    seen = np.unique(labels[locs["trainval_loc"]])
    for a, b in (("trainval_loc", "test_seen_loc"), ("trainval_loc", "test_unseen_loc"),
                 ("test_seen_loc", "test_unseen_loc")):
        if np.intersect1d(locs[a], locs[b]).size:
            raise DataError(f"{splits_path}: keys '{a}'/'{b}': found shared images; expected disjoint sets")
    if np.intersect1d(seen, labels[locs["test_unseen_loc"]]).size:
        raise DataError(f"{splits_path}: key 'test_unseen_loc': found images of trainval classes; expected unseen "
                        "classes only")
    # The HDF5 stores att transposed (K x I); xlsa17's columns are already unit-norm, so no renormalisation.
    return Xlsa17(image_files=files, labels=labels, locs=locs, att=att.T.copy(), original_att=original.T.copy(),
                  att_splits=splits_path, res101=res_path)
