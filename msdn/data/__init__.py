"""Benchmarks on disk -> validated arrays + a shared float16 feature cache.

Reads the layout of the authors' pipeline under ``--data-root DIR`` (see docs/data.md):

    DIR/<DS>/feature_map_ResNet_101_<DS>.hdf5      feature maps N x C x H x W, labels, locs, att, w2v_att
    DIR/xlsa17/data/<DS>/att_splits.mat            xlsa17 splits (1-based), incl. train_loc / val_loc
    DIR/xlsa17/data/<DS>/res101.mat                optional: labels cross-check
    DIR/w2v/<DS>_attribute.pkl (or .npy)           optional: attribute word vectors I x 300

Everything is validated before any expensive work; the feature maps are then converted once into
``DIR/<DS>/cache/features_f16_<key>.npy`` (float16, region-major N x R x C, with block digests in a
``.json`` sidecar, checked when opened) and memory-mapped, so many processes (Ray Tune trials) share
one copy in the page cache. ``python -m msdn.data.verify --dataset DS --data-root DIR`` checks it fully.

    from msdn.data import load_benchmark, make_split
    bench = load_benchmark("synthetic", "data")      # generated on first use
    split = make_split(bench, "val", seed=0)

One module per job: `layout` (where files live), `readers` (MATLAB / pickle / index readers and
validators), `metadata` (labels, splits, attributes, word vectors, cross-checked), `cache` (the float16
cache and its digests), `benchmark` (`load_benchmark`), `splits` (protocols), `errors` (`DataError`),
`verify` (the full cache check's command line).
"""
from __future__ import annotations

from ..fsutil import file_lock
from ..progress import Progress
from .benchmark import Benchmark, load_benchmark
from .cache import (CACHE_CHUNK_BYTES, CACHE_CHUNK_MAX, DIGEST_BLOCK_BYTES, FLOAT16_MAX, cache_path, cache_problem,
                    read_rows, sidecar_path)
from .errors import DataError
from .layout import DATASET_DIRS, BenchmarkPaths, benchmark_paths, check_data_present, check_data_root, data_dir
from .metadata import LOC_KEYS
from .readers import load_numpy_pickle
from .splits import XLSA17_VAL_CLASSES, ZSLSplit, make_split

__all__ = [
    "CACHE_CHUNK_BYTES", "CACHE_CHUNK_MAX", "DATASET_DIRS", "DIGEST_BLOCK_BYTES", "FLOAT16_MAX", "LOC_KEYS",
    "XLSA17_VAL_CLASSES", "Benchmark", "BenchmarkPaths", "DataError", "Progress", "ZSLSplit", "benchmark_paths",
    "cache_path", "cache_problem", "check_data_present", "check_data_root", "data_dir", "file_lock", "load_benchmark",
    "load_numpy_pickle", "make_split", "read_rows", "sidecar_path",
]
