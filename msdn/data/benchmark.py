"""`load_benchmark`: one benchmark's files -> a validated `Benchmark` with memory-mapped float16 features.

Every file is checked (msdn.data.metadata) before the possibly long cache conversion (msdn.data.cache).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..progress import Progress
from .cache import open_cache
from .layout import benchmark_paths, check_data_present, check_data_root, dataset_dir_name
from .metadata import check_res101, check_splits, read_att_splits, read_hdf5_meta, resolve_w2v


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


def load_benchmark(dataset: str, data_root: str | Path, *, progress: Progress = print,
                   cache_dir: str | Path | None = None, verify_cache: bool = False) -> Benchmark:
    """Validate the files of `dataset` under `data_root` and return the benchmark with cached features.

    All metadata is checked before the (possibly long) float16 cache conversion. `synthetic` is generated
    under `data_root` on first use, i.e. when its feature file is absent; files already there are read as
    they are, never regenerated (msdn.synthetic refuses to overwrite what it cannot prove it wrote).
    `cache_dir` overrides DATA_ROOT/<DS>/cache (e.g. for read-only data). The cache is checked cheaply when
    opened; `verify_cache` checks every block of it (msdn.data.cache).
    """
    dataset_dir_name(dataset)
    check_data_root(data_root)
    paths = benchmark_paths(dataset, data_root)
    if dataset == "synthetic" and not paths.hdf5.exists():
        from ..synthetic import ensure_synthetic

        ensure_synthetic(data_root, progress=progress)
    check_data_present(dataset, data_root)
    meta = read_hdf5_meta(paths.hdf5)
    check_splits(meta, paths.hdf5)
    if paths.att_splits.is_file():
        read_att_splits(paths.att_splits, meta, paths.hdf5)
    elif progress:
        progress(f"{paths.att_splits} not found: the paper protocol works, the val protocol will choose "
                 "validation classes by seed")
    resolve_w2v(meta, paths)
    if paths.res101.is_file():
        check_res101(paths.res101, meta, paths.hdf5)

    att = meta.att.astype(np.float32)
    if dataset == "awa2":
        att = np.maximum(att, 0.0)  # the authors clamp AwA2's few negative predicate values
    n, c, h, w = meta.shape
    feats = open_cache(paths.hdf5, Path(cache_dir) if cache_dir else paths.cache_dir, meta.shape, progress,
                       verify=verify_cache)
    k = att.shape[0]
    names = meta.class_names or tuple(f"class_{j:03d}" for j in range(k))
    return Benchmark(
        name=dataset, features=feats, labels=meta.labels, att=att,
        w2v_att=meta.w2v_att.astype(np.float32), trainval_loc=meta.locs["trainval_loc"],
        test_seen_loc=meta.locs["test_seen_loc"], test_unseen_loc=meta.locs["test_unseen_loc"],
        train_loc=meta.train_loc, val_loc=meta.val_loc, class_names=names, feature_shape=(h * w, c),
    )
