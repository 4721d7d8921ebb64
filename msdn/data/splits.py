"""Protocols: which classes compete and which images train / evaluate (`make_split` -> `ZSLSplit`).

paper: the xlsa17 proposed split (trainval -> test_seen / test_unseen). val: train vs validation classes
inside the seen classes, so tuning never touches a test image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..progress import Progress
from .benchmark import Benchmark
from .errors import DataError

# xlsa17's validation classes among the seen classes (val of seen); used when train_loc/val_loc are absent.
XLSA17_VAL_CLASSES = {"cub": (50, 150), "sun": (65, 645), "awa2": (13, 40)}


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
