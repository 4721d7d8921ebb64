"""The shared float16 feature cache: HDF5 feature maps -> DIR/<DS>/cache/features_f16_<key>.npy, memory-mapped.

The feature maps (N, C, H, W) float32 are converted once into a region-major (N, H*W, C) float16 file
and memory-mapped read-only, so many processes (Ray Tune trials) share one copy in the page cache.
The first process builds it under a lock; the others wait and reuse it.

The cache is verifiable: its build records, in a sidecar `features_f16_<key>.json` written before the
cache is renamed into place, the shape, the header size and a SHA-256 of every 16 MiB block of the data.
Opening checks it cheaply (sidecar, size, header, the first and last block and two at random); a full
check reads every block (`load_benchmark(..., verify_cache=True)`, `python -m msdn.data.verify`). A cache
that fails is a derived file: it is rebuilt under the lock, and refused if the rebuilt one fails too.
Rows are checked for NaN/Inf again where they enter a batch (`read_rows`), so a damaged row names itself.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np

from ..fsutil import TMP_MARK, atomic_path, file_lock
from ..progress import Progress
from .errors import DataError, fail

FLOAT16_MAX = 65504.0
CACHE_CHUNK_BYTES = 256 * 2**20  # float32 bytes read from the HDF5 per cache-building step
CACHE_CHUNK_MAX = 512  # images per step at most
DIGEST_BLOCK_BYTES = 16 * 2**20  # the cache's data is hashed in blocks of this size
SPOT_CHECKS = 2  # blocks checked at random when the cache is opened, besides the first and the last
SIDECAR_VERSION = 1
FLOAT16_EXPONENT = 0x7C00  # a float16 whose exponent bits are all set is Inf or NaN
VERIFY_HINT = ("Run `python -m msdn.data.verify --dataset DS --data-root DIR` to check the whole cache and rebuild "
               "it, or delete the file to have it rebuilt.")


def cache_path(hdf5: Path, cache_dir: Path) -> Path:
    """Cache file name keyed by the source's size and mtime, so a replaced HDF5 is converted again."""
    st = hdf5.stat()
    key = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / f"features_f16_{key}.npy"


def sidecar_path(cache: Path) -> Path:
    """The JSON file that records the shape, header size and block digests of `cache`."""
    return cache.with_suffix(".json")


class _BlockHasher:
    """SHA-256 of consecutive DIGEST_BLOCK_BYTES blocks of a byte stream fed in pieces of any size."""

    def __init__(self, block: int):
        self.block, self.digests, self._h, self._filled = block, [], hashlib.sha256(), 0

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            take = min(self.block - self._filled, view.nbytes)
            self._h.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.block:
                self._finish_block()

    def _finish_block(self) -> None:
        self.digests.append(self._h.hexdigest())
        self._h, self._filled = hashlib.sha256(), 0

    def finish(self) -> list[str]:
        if self._filled:
            self._finish_block()
        return self.digests


def _build_cache(hdf5: Path, final: Path, shape: tuple[int, int, int, int], progress: Progress) -> None:
    """Convert feature_map (N, C, H, W) float32 -> (N, H*W, C) float16, chunk by chunk, hashing it as it goes;
    write the sidecar, then rename the cache into place (both atomically)."""
    import h5py

    n, c, h, w = shape
    r = h * w
    chunk = max(1, min(CACHE_CHUNK_MAX, CACHE_CHUNK_BYTES // max(1, c * r * 4)))
    say = progress or (lambda _msg: None)
    say(f"building float16 feature cache ({n} images, {c}x{h}x{w} -> {r}x{c}, {n * r * c * 2 / 2**30:.2f} GiB)\n"
        f"  from {hdf5}\n  to   {final}")
    start = time.perf_counter()
    last_report = start
    hasher = _BlockHasher(DIGEST_BLOCK_BYTES)
    with atomic_path(final) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, r, c))
        with h5py.File(hdf5, "r") as f:
            fm = f["feature_map"]
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                try:
                    block = np.asarray(fm[s:e], dtype=np.float32).reshape(e - s, c, r)
                except (OSError, RuntimeError) as exc:  # a damaged data block of the HDF5
                    raise fail(hdf5, "feature_map", f"images {s}..{e - 1} unreadable ({type(exc).__name__}: {exc})",
                               "a readable HDF5 file (this one is damaged)") from None
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
                hasher.update(out[s:e].reshape(-1).view(np.uint8))  # the rows' bytes, in file order
                now = time.perf_counter()
                if progress and (now - last_report > 10 or e == n):
                    last_report = now
                    say(f"  cache {e}/{n} images ({e / max(now - start, 1e-9):.0f} images/s)")
        offset = int(out.offset)
        out.flush()
        del out
        st = hdf5.stat()
        record = {
            "version": SIDECAR_VERSION, "source": str(hdf5), "source_size": st.st_size,
            "source_mtime_ns": st.st_mtime_ns, "shape": [n, r, c], "dtype": "float16", "data_offset": offset,
            "file_size": tmp.stat().st_size, "block_bytes": hasher.block, "sha256": hasher.finish(),
        }
        # The sidecar lands first: a cache without one is from an interrupted or older build.
        with atomic_path(sidecar_path(final)) as tmp_sidecar:
            tmp_sidecar.write_text(json.dumps(record))


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header, without reading the data."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if fortran:
            raise ValueError("a Fortran-ordered array")
        return tuple(shape), np.dtype(dtype), fh.tell()


def cache_problem(path: Path, shape: tuple[int, int, int, int], *, full: bool = False) -> str | None:
    """Why the cache file at `path` cannot be trusted (a phrase), or None when it checks out.

    Cheap by default (sidecar, size, header, first and last block and SPOT_CHECKS random ones); `full`
    checks every block of the data.
    """
    n, c, h, w = shape
    expected = [n, h * w, c]
    side = sidecar_path(path)
    if not path.is_file():
        return "it does not exist"
    try:
        record = json.loads(side.read_text())
        digests = list(record["sha256"])
        block, offset, size = int(record["block_bytes"]), int(record["data_offset"]), int(record["file_size"])
        ok = record["version"] == SIDECAR_VERSION and record["shape"] == expected and record["dtype"] == "float16"
    except FileNotFoundError:
        return f"it has no digest file {side.name} (an interrupted build, or one by an older version)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its digest file {side.name} cannot be read ({type(exc).__name__}: {exc})"
    if not ok:
        return f"its digest file {side.name} describes another cache (shape {record.get('shape')}, expected {expected})"
    actual_size = path.stat().st_size
    if actual_size != size:
        return f"it is {actual_size} bytes; its digest file records {size} (truncated or overwritten)"
    try:
        header = _read_header(path)
    except (OSError, ValueError) as exc:
        return f"its .npy header cannot be read ({exc})"
    if header != (tuple(expected), np.dtype(np.float16), offset):
        return (f"its header says {header[1]} of shape {header[0]} at byte {header[2]}; expected float16 of "
                f"shape {tuple(expected)} at byte {offset}")
    n_blocks = len(digests)
    if n_blocks != -(-(size - offset) // block):
        return f"its digest file lists {n_blocks} blocks for {size - offset} bytes of data"
    if full or n_blocks <= SPOT_CHECKS + 2:
        which = range(n_blocks)
    else:
        which = sorted({0, n_blocks - 1, *random.SystemRandom().sample(range(1, n_blocks - 1), SPOT_CHECKS)})
    row_bytes = h * w * c * 2
    with open(path, "rb") as fh:
        for i in which:
            fh.seek(offset + i * block)
            if hashlib.sha256(fh.read(block)).hexdigest() != digests[i]:
                first, last = i * block // row_bytes, min(n, -(-(i + 1) * block // row_bytes)) - 1
                return (f"block {i} of its data (images {first}..{last}) does not match the digest recorded "
                        "when it was built (damaged or overwritten)")
    return None


def _lock(cache_dir: Path, final: Path, problem: str | None) -> Path:
    """The build lock's path, creating the folder and the lock file; a DataError that says why when it cannot."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = cache_dir / "features_f16.lock"
        lock.touch(exist_ok=True)
        return lock
    except OSError as exc:
        if problem is None:
            raise DataError(f"{cache_dir}: cannot create the feature cache folder or its lock file ({exc}); "
                            "expected a writable folder next to the HDF5 (or pass cache_dir= to "
                            "load_benchmark)") from None
        raise DataError(f"{final}: the feature cache cannot be used: {problem}; and it cannot be rebuilt, since "
                        f"{cache_dir} is not writable ({exc}). Rebuild it where it can be written (pass cache_dir= "
                        "to load_benchmark) or ask the owner of the folder to delete it.") from None


def open_cache(hdf5: Path, cache_dir: Path, shape: tuple[int, int, int, int], progress: Progress, *,
               verify: bool = False) -> np.ndarray:
    """Memory-map the float16 cache after checking it (cheaply, or every block with `verify`).

    A missing cache is built, once, under a lock. A cache that fails the check is rebuilt (it is derived from
    the HDF5; the progress callback says why), and refused with a DataError when the rebuilt one fails too.
    """
    n, c, h, w = shape
    final = cache_path(hdf5, cache_dir)
    problem = cache_problem(final, shape, full=verify)
    if problem is not None:
        existed = final.is_file()
        if existed and progress:
            progress(f"{final}: {problem}. The cache is derived from {hdf5}: rebuilding it")
        with file_lock(_lock(cache_dir, final, problem if existed else None)):
            if cache_problem(final, shape, full=verify) is not None:  # another process may have rebuilt it
                for stale in cache_dir.glob(f"features_f16_*{TMP_MARK}*"):
                    stale.unlink(missing_ok=True)  # left by an interrupted build; we hold the lock
                _build_cache(hdf5, final, shape, progress)
                for old in cache_dir.glob("features_f16_*"):
                    if old not in (final, sidecar_path(final)) and old.suffix in (".npy", ".json"):
                        old.unlink(missing_ok=True)  # a cache of an older HDF5; open maps keep working
                again = cache_problem(final, shape, full=verify)
                if again is not None:
                    raise DataError(f"{final}: {again}, right after it was rebuilt from {hdf5}; expected a cache "
                                    "that matches what was written. The disk or file system may be failing; "
                                    "pass cache_dir= to load_benchmark to put the cache elsewhere.")
    try:
        feats = np.load(final, mmap_mode="r")
    except ValueError as exc:
        raise DataError(f"{final}: cannot memory-map the feature cache ({exc}); delete it to rebuild") from None
    if feats.shape != (n, h * w, c) or feats.dtype != np.float16:
        raise fail(final, "(array)", f"{feats.dtype} array of shape {feats.shape}",
                   f"float16 of shape {(n, h * w, c)}; delete the file to rebuild it")
    return feats


def read_rows(features: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` of a (memory-mapped) feature array, in the order of `idx`; DataError on a NaN/Inf row.

    Reads in sorted order, which a memmap serves with fewer page faults, then puts the rows back. The
    finiteness check costs about 1% of a training step (float16: one pass over the exponent bits).
    """
    idx = np.asarray(idx)
    order = np.argsort(idx)
    rows = np.empty((idx.size, *features.shape[1:]), dtype=features.dtype)
    rows[order] = features[idx[order]]
    check_rows_finite(features, idx, rows)
    return rows


def check_rows_finite(features: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
    """DataError naming the file and the first image whose row (rows[j] = features[idx[j]]) holds NaN/Inf."""
    if rows.size == 0 or rows.dtype.kind != "f":
        return
    if rows.dtype == np.float16:
        bad = int(np.bitwise_and(rows.view(np.uint16), FLOAT16_EXPONENT).max()) == FLOAT16_EXPONENT
    else:
        bad = not np.isfinite(rows).all()
    if not bad:
        return
    per_row = ~np.isfinite(rows.reshape(len(idx), -1))
    j = int(np.flatnonzero(per_row.any(axis=1))[0])
    source = getattr(features, "filename", None) or "the feature array"
    raise DataError(f"{source}: image {int(idx[j])} (row {int(idx[j])} of the feature cache) holds "
                    f"{int(per_row[j].sum())} NaN/Inf value(s); expected finite float16 features (they were finite "
                    f"when the cache was built, so the file is damaged). {VERIFY_HINT}")
