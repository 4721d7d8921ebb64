"""A benchmark's metadata (labels, splits, attributes, word vectors), read from the HDF5 and cross-checked.

The HDF5 is the source; xlsa17's att_splits.mat and res101.mat, when present, must agree with it
(att_splits.mat also contributes train_loc / val_loc and the class names), and word vectors come from
the HDF5 or from DIR/w2v/<DS>_attribute.pkl|.npy. Nothing here reads the feature values themselves.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, fail
from .layout import BenchmarkPaths
from .readers import as_index, as_vector, cell_strings, check_matrix, loadmat, read_vector_file

LOC_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")


@dataclass
class Meta:
    """Validated metadata read from the HDF5 (and the optional xlsa17 / w2v files)."""

    shape: tuple[int, int, int, int]  # N, C, H, W
    labels: np.ndarray
    att: np.ndarray
    w2v_att: np.ndarray
    locs: dict[str, np.ndarray]
    train_loc: np.ndarray | None
    val_loc: np.ndarray | None
    class_names: tuple[str, ...] | None


def read_hdf5_meta(path: Path) -> Meta:
    """Shapes, labels, locs, att and (if present) w2v_att of the HDF5, each validated."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot open as HDF5 ({exc}); expected the feature file written by the authors' "
                        "preprocessing or msdn.prepare") from None
    with f:
        try:
            return _meta_from(f, path)
        except (OSError, RuntimeError) as exc:  # h5py's errors for damaged metadata or data blocks
            raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc}); the HDF5 file is damaged: expected "
                            "the feature file written by the authors' preprocessing or msdn.prepare") from None


def _meta_from(f, path: Path) -> Meta:
    """read_hdf5_meta's reading and validation of the open file `f`."""
    import h5py

    def get(key: str, required: bool = True):
        if key not in f:
            if not required:
                return None
            raise fail(path, key, f"no such dataset (present: {', '.join(sorted(f.keys())) or 'none'})",
                       "the key written by the authors' preprocessing")
        if not isinstance(f[key], h5py.Dataset):
            raise fail(path, key, "a group", "a dataset")
        return f[key]

    fm = get("feature_map")
    if fm.ndim != 4 or fm.dtype.kind != "f":
        raise fail(path, "feature_map", f"{fm.dtype} array of shape {fm.shape}",
                   "a float array N x C x H x W (e.g. N x 2048 x 14 x 14)")
    shape = tuple(int(s) for s in fm.shape)
    n = shape[0]
    labels = as_vector(get("labels")[()], path, "labels")
    if labels.shape[0] != n:
        raise fail(path, "labels", f"{labels.shape[0]} labels", f"one per image of feature_map ({n})")
    labels = as_index(labels, path, "labels", None, one_based=False)
    locs = {k: as_index(get(k)[()], path, k, n, one_based=False) for k in LOC_KEYS}
    att = check_matrix(get("att")[()], path, "att")
    w2v = get("w2v_att", required=False)
    w2v = None if w2v is None else check_matrix(w2v[()], path, "w2v_att")
    return Meta(shape=shape, labels=labels, att=att, w2v_att=w2v, locs=locs,  # type: ignore[arg-type]
                train_loc=None, val_loc=None, class_names=None)


def check_splits(meta: Meta, path: Path) -> None:
    """Class counts and the disjointness of trainval / test_seen / test_unseen."""
    k = meta.att.shape[0]
    n_cls = int(meta.labels.max()) + 1 if meta.labels.size else 0
    if n_cls != k:
        raise fail(path, "att", f"{k} class rows", f"one row per class, i.e. max label + 1 = {n_cls} rows "
                   "(labels are 0-based class ids)")
    for key, idx in meta.locs.items():
        if np.unique(idx).size != idx.size:
            raise fail(path, key, f"{idx.size - np.unique(idx).size} duplicated image index(es)", "unique indices")
    keys = list(meta.locs)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            common = np.intersect1d(meta.locs[a], meta.locs[b])
            if common.size:
                raise fail(path, f"{a}/{b}", f"{common.size} image(s) in both, e.g. index {common[0]}",
                           "disjoint image sets")
    seen = np.unique(meta.labels[meta.locs["trainval_loc"]])
    unseen = np.unique(meta.labels[meta.locs["test_unseen_loc"]])
    both = np.intersect1d(seen, unseen)
    if both.size:
        raise fail(path, "test_unseen_loc", f"{both.size} class(es) that also have trainval images, e.g. "
                   f"class {both[0]}", "unseen classes disjoint from the trainval (seen) classes")
    extra = np.setdiff1d(np.unique(meta.labels[meta.locs["test_seen_loc"]]), seen)
    if extra.size:
        raise fail(path, "test_seen_loc", f"{extra.size} class(es) without trainval images, e.g. class {extra[0]}",
                   "test-seen images of seen (trainval) classes only")


def read_att_splits(path: Path, meta: Meta, hdf5: Path) -> None:
    """Cross-check xlsa17 att_splits.mat against the HDF5; take train_loc/val_loc and class names from it."""
    keys = ["att", "allclasses_names", *LOC_KEYS, "train_loc", "val_loc"]
    mat = loadmat(path, keys)
    n = meta.shape[0]
    k, i = meta.att.shape
    if "att" in mat:
        att = check_matrix(mat["att"], path, "att")
        if att.shape != (i, k):
            raise fail(path, "att", f"shape {att.shape}", f"attributes x classes = ({i}, {k}), the transpose of "
                       f"the HDF5 att of {hdf5}")
        if not np.allclose(att.T, meta.att, rtol=1e-4, atol=1e-5):
            diff = float(np.max(np.abs(att.T - meta.att)))
            raise fail(path, "att", f"values that differ from the HDF5 att (max abs diff {diff:.3g})",
                       f"the transpose of att in {hdf5}")
    for key in LOC_KEYS:
        if key not in mat:
            raise fail(path, key, "no such variable", "the xlsa17 1-based image indices")
        loc = as_index(mat[key], path, key, n, one_based=True)
        if not np.array_equal(np.sort(loc), np.sort(meta.locs[key])):
            differ = np.setxor1d(loc, meta.locs[key])
            raise fail(path, key, f"{loc.size} indices that, minus 1, disagree with {key} of {hdf5} "
                       f"({meta.locs[key].size} indices; {differ.size} differ, e.g. 0-based {differ[0]})",
                       "the same images in both files (mat = HDF5 + 1)")
    for key in ("train_loc", "val_loc"):
        if key in mat:
            setattr(meta, key, as_index(mat[key], path, key, n, one_based=True))
    if (meta.train_loc is None) != (meta.val_loc is None):
        present = "train_loc" if meta.train_loc is not None else "val_loc"
        raise fail(path, "train_loc/val_loc", f"only {present}", "both train_loc and val_loc, or neither")
    if "allclasses_names" in mat:
        names = cell_strings(mat["allclasses_names"], path, "allclasses_names")
        if len(names) != k:
            raise fail(path, "allclasses_names", f"{len(names)} names", f"one per class ({k}, the rows of the "
                       f"HDF5 att)")
        meta.class_names = names


def check_res101(path: Path, meta: Meta, hdf5: Path) -> None:
    """xlsa17 res101.mat's 1-based labels must equal the HDF5 labels + 1."""
    mat = loadmat(path, ["labels"])
    if "labels" not in mat:
        raise fail(path, "labels", "no such variable", "the xlsa17 1-based image labels (N, 1)")
    labels = as_vector(mat["labels"], path, "labels")
    if labels.shape[0] != meta.shape[0]:
        raise fail(path, "labels", f"{labels.shape[0]} labels", f"{meta.shape[0]}, the images in {hdf5}")
    labels = as_index(labels, path, "labels", meta.att.shape[0], one_based=True, what="classes")
    if not np.array_equal(labels, meta.labels):
        bad = int(np.flatnonzero(labels != meta.labels)[0])
        raise fail(path, "labels", f"{int((labels != meta.labels).sum())} labels that disagree with {hdf5} "
                   f"(first at image {bad}: class {labels[bad]} here, 0-based, vs class {meta.labels[bad]} there)",
                   "res101 labels = HDF5 labels + 1")


def resolve_w2v(meta: Meta, paths: BenchmarkPaths) -> None:
    """Word vectors from the HDF5, else from the pkl/npy; when both exist they must agree."""
    i = meta.att.shape[1]
    source = paths.hdf5
    for file in (paths.w2v_pkl, paths.w2v_npy):
        if not file.is_file():
            continue
        w2v = check_matrix(read_vector_file(file), file, "(array)")
        if w2v.shape[0] != i:
            raise fail(file, "(array)", f"{w2v.shape[0]} rows (shape {w2v.shape})",
                       f"one row per attribute, i.e. {i} = the columns of att in {paths.hdf5}")
        if meta.w2v_att is None:
            meta.w2v_att, source = w2v, file
        elif meta.w2v_att.shape != w2v.shape or not np.allclose(meta.w2v_att, w2v, rtol=1e-4, atol=1e-5):
            raise fail(file, "(array)", f"word vectors of shape {w2v.shape} that differ from w2v_att in {paths.hdf5}",
                       "the same vectors as the HDF5 (or remove one of them)")
        break
    if meta.w2v_att is None:
        raise fail(paths.hdf5, "w2v_att", "no such dataset and no word-vector file",
                   f"w2v_att (I x 300) in the HDF5, or {paths.w2v_pkl} / {paths.w2v_npy}")
    if meta.w2v_att.shape[0] != i:
        raise fail(source, "w2v_att", f"{meta.w2v_att.shape[0]} rows (shape {meta.w2v_att.shape})",
                   f"one row per attribute, i.e. {i} = the columns of att")
