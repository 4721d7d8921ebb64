"""A small synthetic ZSL benchmark written in exactly the real on-disk formats.

Every attribute has a visual prototype (a sparse non-negative direction in channel space) and a home
region on a 7 x 7 grid. An image of class k shows attribute i with a probability given by the class's
attribute strength, as a blob around the home region (with spatial jitter), on top of clutter and noise,
then ReLU'd like ResNet features. Unseen classes combine the same attributes differently, so a model
that learns attribute detectors recognises them from their attribute vectors. Word vectors are a noisy
random projection of the prototypes: informative, not exact.

    python -m msdn.synthetic --data-root data [--seed 0]     # ~3000 images, a few seconds

It writes only where none of its files exist, or over files that are entirely its own output (the marker
SYNTHETIC/.complete records each file's size and SHA-256); it never overwrites anything else.

Layout written (see docs/data.md): DATA_ROOT/SYNTHETIC/feature_map_ResNet_101_SYNTHETIC.hdf5,
DATA_ROOT/xlsa17/data/SYNTHETIC/{att_splits,res101}.mat, DATA_ROOT/w2v/SYNTHETIC_attribute.pkl.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .cli import cli_entry, command_parser
from .data.errors import DataError
from .data.layout import check_data_root
from .fsutil import atomic_path, file_lock, sha256_file, temp_name
from .progress import Progress

NUM_CLASSES = 50
NUM_SEEN = 40  # of which NUM_TRAIN are xlsa17-style train classes, the rest validation classes
NUM_TRAIN = 27
NUM_ATTRIBUTES = 64
GRID = 7  # regions per side
CHANNELS = 256
IMAGES_PER_CLASS = (50, 70)  # inclusive range
W2V_DIM = 300
TEST_SEEN_FRACTION = 0.2
# Difficulty knobs (tuned so that seen accuracy is well below 100% and unseen clearly above chance).
ACTIVE_PROB = 0.25  # share of attributes a class has
SPURIOUS_PROB = 0.04  # chance that an attribute the class lacks still shows up in an image
PRESENT_BASE = 0.6  # an attribute of strength s shows with probability PRESENT_BASE + (1 - PRESENT_BASE) * s
NUM_CLUTTER = 24  # distractor patterns that belong to no attribute
CLUTTER_PER_IMAGE = 3.0
NOISE_STD = 0.3
SIGNAL_AMPLITUDE = 1.5
FORMAT_VERSION = 2  # 2: the marker records each file's size and SHA-256
MARKER = ".complete"


@dataclass(frozen=True)
class SyntheticArrays:
    """Everything the files hold, in the HDF5 conventions (0-based indices, K x I attributes)."""

    feature_map: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray  # (N,) int64
    trainval_loc: np.ndarray
    test_seen_loc: np.ndarray
    test_unseen_loc: np.ndarray
    train_loc: np.ndarray
    val_loc: np.ndarray
    att: np.ndarray  # (K, I) float64, rows unit norm
    original_att: np.ndarray  # (K, I) float64 in [0, 100]
    w2v_att: np.ndarray  # (I, 300) float64
    class_names: tuple[str, ...]
    image_files: tuple[str, ...]


def _class_strengths(rng: np.random.Generator, seen: np.ndarray) -> np.ndarray:
    """Sparse continuous class-attribute strengths in [0, 1]; every attribute occurs in some seen class."""
    while True:
        active = rng.random((NUM_CLASSES, NUM_ATTRIBUTES)) < ACTIVE_PROB
        strength = np.where(active, rng.uniform(0.35, 1.0, active.shape), 0.0)
        enough = (active.sum(1) >= 6).all()
        covered = active[seen].any(0).all()
        distinct = np.unique(active, axis=0).shape[0] == NUM_CLASSES
        if enough and covered and distinct:
            return strength


def _blobs(rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    """Gaussian blobs on the grid around integer centres (N, J, 2) jittered by up to one cell -> (N, R, J)."""
    jitter = rng.integers(-1, 2, size=centers.shape)
    c = np.clip(centers + jitter, 0, GRID - 1)
    ys, xs = np.divmod(np.arange(GRID * GRID), GRID)
    d2 = (ys[:, None] - c[:, None, :, 0]) ** 2 + (xs[:, None] - c[:, None, :, 1]) ** 2
    blob = np.exp(-d2 / (2 * 0.8**2)).astype(np.float32)
    blob[blob < 1e-4] = 0.0  # far tails are irrelevant and would only feed tiny values to the GEMM
    return blob


def _render(maps: np.ndarray, protos: np.ndarray) -> np.ndarray:
    """(N, R, J) pattern strengths x (J, C) prototypes -> (N, R, C), as one 2-D GEMM."""
    n, r, j = maps.shape
    return (maps.reshape(n * r, j) @ protos).reshape(n, r, -1)


def generate(seed: int = 0) -> SyntheticArrays:
    """Build the benchmark in memory; identical arrays for identical seeds."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(NUM_CLASSES)
    seen, unseen = np.sort(perm[:NUM_SEEN]), np.sort(perm[NUM_SEEN:])
    train_classes = np.sort(rng.permutation(seen)[:NUM_TRAIN])

    strength = _class_strengths(rng, seen)
    original_att = np.round(100.0 * strength, 2)
    att = original_att / np.linalg.norm(original_att, axis=1, keepdims=True)

    # Visual vocabulary: sparse non-negative prototypes for attributes and for clutter.
    def prototypes(n: int) -> np.ndarray:
        p = np.maximum(rng.standard_normal((n, CHANNELS)), 0) * (rng.random((n, CHANNELS)) < 0.3)
        return (p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32)

    proto, clutter = prototypes(NUM_ATTRIBUTES), prototypes(NUM_CLUTTER)
    home = rng.integers(0, GRID, size=(NUM_ATTRIBUTES, 2))

    counts = rng.integers(IMAGES_PER_CLASS[0], IMAGES_PER_CLASS[1] + 1, size=NUM_CLASSES)
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), counts)).astype(np.int64)
    n = labels.size

    # Which attributes each image shows, and how strongly.
    s = strength[labels]  # (N, I)
    present = rng.random(s.shape) < np.where(s > 0, PRESENT_BASE + (1 - PRESENT_BASE) * s, SPURIOUS_PROB)
    intensity = present * rng.uniform(0.6, 1.4, s.shape) * np.where(s > 0, s, 0.5)
    maps = _blobs(rng, np.broadcast_to(home, (n, NUM_ATTRIBUTES, 2))) * intensity[:, None, :].astype(np.float32)
    signal = SIGNAL_AMPLITUDE * _render(maps, proto)  # (N, R, C)

    clutter_on = rng.random((n, NUM_CLUTTER)) < CLUTTER_PER_IMAGE / NUM_CLUTTER
    clutter_maps = _blobs(rng, rng.integers(0, GRID, size=(n, NUM_CLUTTER, 2)))
    clutter_maps *= (clutter_on * rng.uniform(0.5, 1.5, clutter_on.shape))[:, None, :].astype(np.float32)
    signal += SIGNAL_AMPLITUDE * _render(clutter_maps, clutter)
    signal += NOISE_STD * rng.standard_normal(signal.shape, dtype=np.float32)
    np.maximum(signal, 0, out=signal)
    feature_map = np.ascontiguousarray(signal.transpose(0, 2, 1)).reshape(n, CHANNELS, GRID, GRID)

    projection = rng.standard_normal((CHANNELS, W2V_DIM)) / np.sqrt(CHANNELS)
    w2v_att = 3.0 * proto.astype(np.float64) @ projection + 0.1 * rng.standard_normal((NUM_ATTRIBUTES, W2V_DIM))

    # xlsa17 layout: seen-class images split trainval / test_seen; train/val_loc cover trainval + test_seen.
    trainval, test_seen = [], []
    for k in seen:
        imgs = rng.permutation(np.flatnonzero(labels == k))
        n_test = int(round(TEST_SEEN_FRACTION * imgs.size))
        test_seen.append(imgs[:n_test])
        trainval.append(imgs[n_test:])
    is_train = np.isin(labels, train_classes)
    is_val = np.isin(labels, seen) & ~is_train
    return SyntheticArrays(
        feature_map=feature_map.astype(np.float32, copy=False), labels=labels,
        trainval_loc=np.sort(np.concatenate(trainval)), test_seen_loc=np.sort(np.concatenate(test_seen)),
        test_unseen_loc=np.flatnonzero(np.isin(labels, unseen)), train_loc=np.flatnonzero(is_train),
        val_loc=np.flatnonzero(is_val), att=att, original_att=original_att, w2v_att=w2v_att,
        class_names=tuple(f"{k + 1:03d}.synthetic_class_{k:02d}" for k in range(NUM_CLASSES)),
        image_files=tuple(f"SYNTHETIC/images/{labels[j] + 1:03d}/img_{j:05d}.jpg" for j in range(n)),
    )


# ----------------------------------------------------------------------------- writing


def _paths(data_root: Path) -> dict[str, Path]:
    """Every file of the benchmark, in the order they are renamed into place (the HDF5, the required one, last)."""
    return {
        "att_splits": data_root / "xlsa17" / "data" / "SYNTHETIC" / "att_splits.mat",
        "res101": data_root / "xlsa17" / "data" / "SYNTHETIC" / "res101.mat",
        "w2v": data_root / "w2v" / "SYNTHETIC_attribute.pkl",
        "hdf5": data_root / "SYNTHETIC" / "feature_map_ResNet_101_SYNTHETIC.hdf5",
    }


def _marker(data_root: Path) -> Path:
    return data_root / "SYNTHETIC" / MARKER


def _read_marker(data_root: Path) -> dict | None:
    """The marker's record (seed, state, and per file its size and SHA-256), or None when absent or unreadable."""
    try:
        info = json.loads(_marker(data_root).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _complete_seed(data_root: Path) -> int | None:
    """The seed of a completely written synthetic set under data_root, or None.

    Cheap: the marker says "complete" and every file is there with its recorded size (a marker of
    FORMAT_VERSION 1, which records no files, counts when every file is there).
    """
    info = _read_marker(data_root)
    if info is None or not all(p.is_file() for p in _paths(data_root).values()):
        return None
    if info.get("version") == 1:
        return info.get("seed")
    if info.get("version") != FORMAT_VERSION or info.get("state") != "complete":
        return None
    files = info.get("files", {})
    for p in _paths(data_root).values():
        record = files.get(_rel(data_root, p))
        if not isinstance(record, dict) or record.get("size") != p.stat().st_size:
            return None
    return info.get("seed")


def _rel(data_root: Path, path: Path) -> str:
    return path.relative_to(data_root).as_posix()


def synthetic_present(data_root: str | Path) -> bool:
    """True when a complete synthetic benchmark (any seed) exists under data_root."""
    return _complete_seed(Path(data_root)) is not None


def not_own_output(data_root: str | Path) -> list[str]:
    """The benchmark files under data_root that msdn.synthetic cannot prove it wrote, one line each (why).

    Its own output is what its marker lists, byte for byte (size and SHA-256). A file present without a
    marker, a file that differs from its record, and a file missing from a complete set (someone removed
    it) are not; files missing from an interrupted write are. An empty list: regenerating loses nothing.
    """
    root = Path(data_root)
    info = _read_marker(root)
    digests = info.get("files") if info and info.get("version") == FORMAT_VERSION else None
    lines = []
    for p in _paths(root).values():
        if not p.exists():
            if info is not None and info.get("state") == "complete":
                lines.append(f"{p}: missing, but listed as written in {_marker(root)} (removed since)")
            continue
        record = digests.get(_rel(root, p)) if isinstance(digests, dict) else None
        if info is None:
            lines.append(f"{p}: present, and there is no {_marker(root).name} marker (not written by msdn.synthetic)")
        elif digests is None:
            lines.append(f"{p}: its marker {_marker(root)} records no digests (an older version), so it cannot be "
                         "told apart from a file of yours")
        elif not isinstance(record, dict):
            lines.append(f"{p}: not listed in {_marker(root)}")
        elif not p.is_file() or record.get("size") != p.stat().st_size or record.get("sha256") != sha256_file(p):
            lines.append(f"{p}: differs from what msdn.synthetic wrote (modified since)")
    return lines


def _mat_cell(strings: tuple[str, ...]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    for j, s in enumerate(strings):
        cell[j, 0] = s
    return cell


def _mat_loc(idx: np.ndarray, n: int) -> np.ndarray:
    """0-based indices -> 1-based (n, 1) column, in the unsigned type MATLAB used for xlsa17."""
    return (idx + 1).astype(np.uint16 if n < 2**16 else np.uint32).reshape(-1, 1)


def _write_files(a: SyntheticArrays, paths: dict[str, Path]) -> None:
    """Write every file of the benchmark to `paths` (the caller's temporary names)."""
    import h5py
    import scipy.io

    n = a.labels.size
    with h5py.File(paths["hdf5"], "w") as f:
        f.create_dataset("feature_map", data=a.feature_map)
        f.create_dataset("labels", data=a.labels)
        for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc"):
            f.create_dataset(key, data=getattr(a, key).astype(np.int64))
        f.create_dataset("att", data=a.att)
        f.create_dataset("original_att", data=a.original_att)
        f.create_dataset("w2v_att", data=a.w2v_att)
    splits = {
        "att": a.att.T, "original_att": a.original_att.T, "allclasses_names": _mat_cell(a.class_names),
        **{key: _mat_loc(getattr(a, key), n)
           for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")},
    }
    with open(paths["att_splits"], "wb") as fh:
        scipy.io.savemat(fh, splits, format="5")
    res101 = {"labels": (a.labels + 1).astype(np.uint8 if NUM_CLASSES < 256 else np.uint16).reshape(-1, 1),
              "image_files": _mat_cell(a.image_files)}
    with open(paths["res101"], "wb") as fh:
        scipy.io.savemat(fh, res101, format="5")
    with open(paths["w2v"], "wb") as fh:
        pickle.dump(a.w2v_att, fh, protocol=3)


def _write_marker(root: Path, seed: int, state: str, files: dict[str, dict]) -> None:
    with atomic_path(_marker(root)) as tmp:
        tmp.write_text(json.dumps({"seed": seed, "version": FORMAT_VERSION, "state": state, "files": files}))


def ensure_synthetic(data_root: str | Path, seed: int = 0, progress: Progress = print) -> Path:
    """Write the synthetic benchmark for `seed` under data_root unless already complete; return DATA_ROOT/SYNTHETIC.

    It writes where none of its files exist, and rewrites (e.g. for another seed) only files that are
    entirely its own output: every file present must match the size and SHA-256 its marker recorded.
    Anything else (a file without a marker, a modified file, a file removed from a complete set) is a
    DataError that lists the files, and nothing is touched.

    Files are written under temporary names; the marker, with their digests, is written next (state
    "writing"), then the files are renamed into place, the HDF5 last, and the marker says "complete". An
    interrupted run leaves only files its marker vouches for, so the next run regenerates them.
    Concurrent callers wait on a lock and reuse the result.
    """
    root = Path(data_root)
    check_data_root(root)
    paths = _paths(root)
    out_dir = root / "SYNTHETIC"
    if _complete_seed(root) == seed:
        return out_dir
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir / ".lock"):
        if _complete_seed(root) == seed:  # written by another process while we waited
            return out_dir
        foreign = not_own_output(root)
        if foreign:
            listing = "\n".join(f"  {line}" for line in foreign)
            raise DataError(
                f"--data-root {root}: refusing to write the synthetic benchmark (seed {seed}) over files that are not "
                f"entirely its own output:\n{listing}\nmsdn.synthetic only replaces files it can prove it wrote (the "
                f"sizes and SHA-256 digests in {_marker(root)}). Nothing was changed. Use an empty --data-root, or "
                "remove these files (and the marker) to generate the benchmark here."
            )
        for p in paths.values():  # our own earlier output (another seed, or an interrupted write)
            p.unlink(missing_ok=True)
        start = time.perf_counter()
        if progress:
            progress(f"generating the synthetic benchmark (seed {seed}) under {root}")
        arrays = generate(seed)
        with contextlib.ExitStack() as stack:
            tmps = {key: stack.enter_context(_kept_temp(p)) for key, p in paths.items()}
            _write_files(arrays, tmps)
            files = {_rel(root, paths[key]): {"size": tmp.stat().st_size, "sha256": sha256_file(tmp)}
                     for key, tmp in tmps.items()}
            _write_marker(root, seed, "writing", files)  # vouches for the files before they appear
            for key, tmp in tmps.items():
                os.replace(tmp, paths[key])
        _write_marker(root, seed, "complete", files)
        if progress:
            progress(f"synthetic benchmark written in {time.perf_counter() - start:.1f} s: {arrays.labels.size} images, "
                     f"{NUM_CLASSES} classes ({NUM_SEEN} seen = {NUM_TRAIN} train + {NUM_SEEN - NUM_TRAIN} val, "
                     f"{NUM_CLASSES - NUM_SEEN} unseen),\n  {NUM_ATTRIBUTES} attributes, {GRID}x{GRID} regions x "
                     f"{CHANNELS} channels")
    return out_dir


@contextlib.contextmanager
def _kept_temp(final: Path) -> Iterator[Path]:
    """A temporary name next to `final`, removed on the way out unless it was renamed into place."""
    tmp = temp_name(final)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "python -m msdn.synthetic", __doc__.split("\n\n")[0],
        "python -m msdn.synthetic --data-root data   # the demo data msdn.train --dataset synthetic reads",
        "python -m msdn.synthetic --data-root /tmp/synthetic --seed 1",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", required=True, metavar="DIR",
                      help="folder that receives SYNTHETIC/, xlsa17/ and w2v/")
    data.add_argument("--seed", type=int, default=0, metavar="N", help="generator seed (same seed, same arrays)")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ensure_synthetic(args.data_root, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
