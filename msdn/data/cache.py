"""The shared float16 feature cache: HDF5 feature maps -> DIR/<DS>/cache/features_f16_<key>.npy, memory-mapped.

The feature maps (N, C, H, W) float32 are converted once into a region-major (N, H*W, C) float16 file
and memory-mapped read-only, so many processes (Ray Tune trials) share one copy in the page cache.
The first process builds it under a lock; the others wait and reuse it.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from ..fsutil import TMP_MARK, atomic_path, file_lock
from ..progress import Progress
from .errors import DataError, fail

FLOAT16_MAX = 65504.0
CACHE_CHUNK_BYTES = 256 * 2**20  # float32 bytes read from the HDF5 per cache-building step
CACHE_CHUNK_MAX = 512  # images per step at most


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
    say = progress or (lambda _msg: None)
    say(f"building float16 feature cache {final} from {hdf5} ({n} images, {c}x{h}x{w} -> {r}x{c}, "
        f"{n * r * c * 2 / 2**30:.2f} GiB)")
    start = time.perf_counter()
    last_report = start
    with atomic_path(final) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, r, c))
        with h5py.File(hdf5, "r") as f:
            fm = f["feature_map"]
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                block = np.asarray(fm[s:e], dtype=np.float32).reshape(e - s, c, r)
                hi, lo = float(block.max()), float(block.min())
                if not (np.isfinite(hi) and np.isfinite(lo)):
                    bad = np.argwhere(~np.isfinite(block))[0]
                    raise fail(hdf5, "feature_map", f"NaN/Inf in image {s + int(bad[0])} (channel {int(bad[1])}, "
                               f"region {int(bad[2])})", "finite feature values")
                if max(hi, -lo) > FLOAT16_MAX:
                    bad_img = s + int(np.argmax(np.abs(block).reshape(e - s, -1).max(axis=1)))
                    raise fail(hdf5, "feature_map", f"a value of {hi if hi > -lo else lo:.6g} (image {bad_img})",
                               f"|values| <= {FLOAT16_MAX:.0f}, the float16 range used by the cache")
                out[s:e] = block.transpose(0, 2, 1)
                now = time.perf_counter()
                if progress and (now - last_report > 10 or e == n):
                    last_report = now
                    say(f"  cache {e}/{n} images ({e / max(now - start, 1e-9):.0f} images/s)")
        out.flush()
        del out


def open_cache(hdf5: Path, cache_dir: Path, shape: tuple[int, int, int, int], progress: Progress) -> np.ndarray:
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
                for stale in cache_dir.glob(f"features_f16_*{TMP_MARK}*.npy"):
                    stale.unlink(missing_ok=True)  # left by an interrupted build; we hold the lock
                _build_cache(hdf5, final, shape, progress)
                for old in cache_dir.glob("features_f16_*.npy"):
                    if old != final and TMP_MARK not in old.name:
                        old.unlink(missing_ok=True)  # a cache of an older HDF5; open maps keep working
    try:
        feats = np.load(final, mmap_mode="r")
    except ValueError as exc:
        raise DataError(f"{final}: cannot memory-map the feature cache ({exc}); delete it to rebuild") from None
    if feats.shape != (n, h * w, c) or feats.dtype != np.float16:
        raise fail(final, "(array)", f"{feats.dtype} array of shape {feats.shape}",
                   f"float16 of shape {(n, h * w, c)}; delete the file to rebuild it")
    return feats


def read_rows(features: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` of a (memory-mapped) feature array, in the order of `idx`.

    Reads in sorted order, which a memmap serves with fewer page faults, then puts the rows back.
    """
    idx = np.asarray(idx)
    order = np.argsort(idx)
    rows = np.empty((idx.size, *features.shape[1:]), dtype=features.dtype)
    rows[order] = features[idx[order]]
    return rows
