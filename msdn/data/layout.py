"""Where each benchmark's files live under a data root, and the cheap check that they are there.

    DIR/<DS>/feature_map_ResNet_101_<DS>.hdf5      feature maps N x C x H x W, labels, locs, att, w2v_att
    DIR/<DS>/cache/                                the float16 feature cache (msdn.data.cache)
    DIR/xlsa17/data/<DS>/att_splits.mat            xlsa17 splits (1-based), incl. train_loc / val_loc
    DIR/xlsa17/data/<DS>/res101.mat                optional: labels cross-check
    DIR/w2v/<DS>_attribute.pkl (or .npy)           optional: attribute word vectors I x 300
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import DATASETS
from .errors import DataError

# <DS>, the folder name of each registered dataset: the authors' pipeline uses the upper-case name.
DATASET_DIRS = {name: name.upper() for name in DATASETS}


@dataclass(frozen=True)
class BenchmarkPaths:
    """Where each file of one benchmark lives under a data root."""

    hdf5: Path
    att_splits: Path
    res101: Path
    w2v_pkl: Path
    w2v_npy: Path
    cache_dir: Path


def dataset_dir_name(dataset: str) -> str:
    """<DS> for `dataset` (e.g. 'CUB'); DataError naming the known datasets otherwise."""
    if dataset not in DATASET_DIRS:
        raise DataError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASET_DIRS)} "
                        "(cub, sun and awa2 need the files described in docs/data.md; synthetic is generated "
                        "on first use and needs no download).")
    return DATASET_DIRS[dataset]


def data_dir(dataset: str, data_root: str | Path) -> Path:
    """The folder holding the HDF5 feature maps (and the cache) of `dataset`: DATA_ROOT/<DS>."""
    return Path(data_root) / dataset_dir_name(dataset)


def benchmark_paths(dataset: str, data_root: str | Path) -> BenchmarkPaths:
    """All file locations of `dataset` under `data_root`, present or not."""
    ds = dataset_dir_name(dataset)
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


def missing_data_message(dataset: str, data_root: str | Path, missing: Path) -> str:
    """What to put where, and how to get it, when a benchmark file is absent."""
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


def check_data_root(data_root: str | Path) -> None:
    """DataError when the data root exists but is not a folder (a missing one is created or reported later)."""
    root = Path(data_root)
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-root {root} is a file; expected a folder (the data root that holds <DS>/, "
                        "xlsa17/ and w2v/, see docs/data.md)")


def check_data_present(dataset: str, data_root: str | Path) -> None:
    """Cheap existence check (no file is opened); raises DataError with instructions when data is missing.

    The synthetic benchmark is generated on first use, so only a data root that is a file fails it.
    """
    dataset_dir_name(dataset)
    check_data_root(data_root)
    if dataset == "synthetic":
        return
    hdf5 = benchmark_paths(dataset, data_root).hdf5
    if hdf5.is_dir():
        raise DataError(f"{hdf5} is a folder; expected the HDF5 feature file of {dataset} (see docs/data.md)")
    if not hdf5.is_file():
        raise DataError(missing_data_message(dataset, data_root, hdf5))
