"""Backbone features of every image into OUT/<DS>/feature_map_ResNet_101_<DS>.hdf5.partial, resumably.

The partial file carries a signature of the run (image list, weights, size, dtype); it is flushed after
every batch and its `images_done` counter is written after the features it declares complete, so a run
killed at any point continues from the last complete batch when started again with the same arguments.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import DataError
from ..data.cache import FLOAT16_MAX
from ..progress import Progress, silent, to_stderr
from .backbone import Weights, image_transform
from .images import image_tail
from .xlsa17 import Xlsa17

FORMAT_VERSION = 1
PROGRESS_SECONDS = 10.0
# Test hook: SIGKILL the process after this many flushed batches (an honest crash, for the resume test).
STOP_ENV = "MSDN_PREPARE_STOP_AFTER_CHUNKS"
SPACE_MARGIN = 1 << 20  # bytes kept free beyond a batch's features, for HDF5's own metadata


class ImageFiles:
    """A map-style dataset of (index, normalised image tensor, error) for images[start:].

    Every mode PIL reads becomes RGB as in torchvision's loader (`convert("RGB")`: greyscale repeated,
    CMYK and palette images converted, an alpha channel dropped). An image that cannot be read gives a
    zero tensor and the error in words: raised in a loader worker, it would reach the user wrapped in
    torch's "Caught DataError in DataLoader worker process" and the worker's traceback. `extract` raises it.
    """

    def __init__(self, paths: Sequence[Path], start: int, size: int):
        self.paths, self.start, self.size, self.transform = list(paths), start, size, image_transform(size)

    def __len__(self) -> int:
        return len(self.paths) - self.start

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        path = self.paths[self.start + i]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
            return self.start + i, self.transform(rgb), ""
        except Exception as exc:  # noqa: BLE001 - any failure to read the file is the file's, said by name
            return self.start + i, torch.zeros(3, self.size, self.size), image_error(path, exc)


def image_error(path: Path, exc: BaseException) -> str:
    """One paragraph: which image could not be read, why, and what to do."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        why = "not an image file PIL can read (empty, damaged or another format)"
    else:
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'unreadable'}"
    return (f"{path}: cannot read as an image ({why}); expected a complete JPEG/PNG image. Replace it with an "
            f"intact copy and run the same command again: the images before it are kept and extraction continues "
            f"from the last complete batch.")


def run_signature(args: argparse.Namespace, x: Xlsa17, weights: Weights, shape: tuple[int, int, int]) -> dict:
    """Attributes a partial or finished file must share with this run to be continued or kept."""
    images = hashlib.sha256("\n".join(image_tail(args.dataset, f) for f in x.image_files).encode())
    images.update(x.labels.tobytes())
    return {
        "msdn_prepare_version": FORMAT_VERSION, "dataset": args.dataset, "num_images": len(x.image_files),
        "feature_shape": np.array(shape, dtype=np.int64), "image_size": args.image_size, "dtype": args.dtype,
        "backbone_weights": weights.label, "backbone_weights_sha256": weights.sha256,
        "image_list_sha256": images.hexdigest(),
    }


def signature_differences(attrs, expected: dict) -> list[str]:
    """One line per signature attribute where the file (`attrs`) and this run (`expected`) differ."""
    diffs = []
    for key, want in expected.items():
        have = attrs.get(key)
        if have is None or not np.array_equal(np.asarray(have), np.asarray(want)):
            diffs.append(f"{key}: file has {have!r}, this run {want!r}")
    return diffs


def write_metadata(f, x: Xlsa17, w2v: np.ndarray) -> None:
    """labels, locs, att, original_att, w2v_att: small datasets, (re)written whole."""
    arrays = {"labels": x.labels, **x.locs, "att": x.att, "original_att": x.original_att, "w2v_att": w2v}
    for key, value in arrays.items():
        if key in f:
            del f[key]
        f.create_dataset(key, data=value)


def metadata_matches(f, x: Xlsa17, w2v: np.ndarray) -> bool:
    """True when the file's small datasets already equal this run's (no rewrite, so the mtime stays)."""
    arrays = {"labels": x.labels, **x.locs, "att": x.att, "original_att": x.original_att, "w2v_att": w2v}
    return all(k in f and f[k].shape == v.shape and np.array_equal(f[k][()], v) for k, v in arrays.items())


def _create_partial(path: Path, signature: dict, n: int, shape: tuple[int, int, int], extra_attrs: dict):
    import h5py

    f = h5py.File(path, "w")
    # All chunks are allocated now (no fill written), so later writes only touch raw data: a kill between
    # flushes can leave a half-written batch, never a broken index.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    f.create_dataset("feature_map", shape=(n, *shape), dtype=signature["dtype"], chunks=(1, *shape),
                     dcpl=dcpl, fill_time="never")
    f.attrs.update({**signature, **extra_attrs, "images_done": 0})
    f.flush()
    return f


def _open_partial(path: Path, signature: dict, progress: Progress):
    """Reopen a partial file of an identical run (DataError if it was made differently), or None if unreadable."""
    import h5py

    try:
        f = h5py.File(path, "r+")
    except OSError as exc:
        if progress:
            progress(f"{path}: cannot reopen the interrupted file ({exc}); starting over")
        return None
    diffs = signature_differences(f.attrs, signature)
    if diffs:
        f.close()
        raise DataError(f"{path}: an interrupted run with other settings ({'; '.join(diffs)}); expected the same "
                        "arguments to continue it. Delete the file to start over with these.")
    return f


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def extract(args: argparse.Namespace, paths: Sequence[Path], partial: Path, signature: dict, backbone, device,
            extra_attrs: dict, progress: Progress = to_stderr) -> None:
    """Fill partial's feature_map batch by batch from images_done on, flushing after each batch."""
    import torch

    say = progress or silent
    n, shape = len(paths), tuple(int(s) for s in signature["feature_shape"])
    f = _open_partial(partial, signature, progress) if partial.is_file() else None
    if f is None:
        f = _create_partial(partial, signature, n, shape, extra_attrs)
    with f:
        start = int(f.attrs["images_done"])
        if start:
            say(f"resuming {partial.name}: {start}/{n} images already extracted")
        fm = f["feature_map"]
        dtype = np.dtype(args.dtype)
        loader = torch.utils.data.DataLoader(
            ImageFiles(paths, start, args.image_size), batch_size=args.batch_size, shuffle=False,
            num_workers=args.workers, pin_memory=device.type == "cuda")
        stop_after = int(os.environ.get(STOP_ENV, "0") or 0)
        t0 = last = time.perf_counter()
        done, chunks = start, 0
        with torch.inference_mode():
            for idx, batch, errors in loader:
                failed = next((error for error in errors if error), None)
                if failed:
                    raise DataError(failed)
                out = backbone(batch.to(device, non_blocking=True)).float().cpu().numpy()
                s, e = int(idx[0]), int(idx[-1]) + 1
                if e - s != len(idx) or s != done or out.shape[1:] != shape:
                    raise RuntimeError(f"batch images {s}..{e} of shape {out.shape}; expected images {done}.. in "
                                       f"order, each {shape}")
                if not np.all(np.isfinite(out)):
                    bad = s + int(np.argwhere(~np.isfinite(out))[0][0])
                    raise DataError(f"{paths[bad]}: the backbone gave NaN/Inf features; expected finite values")
                if dtype == np.float16 and np.abs(out).max() > FLOAT16_MAX:
                    raise DataError(f"images {s}..{e - 1}: features up to {np.abs(out).max():.6g} exceed the float16 "
                                    "range; use --dtype float32")
                batch_bytes = len(idx) * int(np.prod(shape)) * dtype.itemsize
                if shutil.disk_usage(partial.parent).free < batch_bytes + SPACE_MARGIN:
                    # Said before HDF5 meets the full disk: it then fails on every later flush, and its file
                    # object can crash the interpreter when released; this way the file closes consistent.
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial))
                fm[s:e] = out.astype(dtype)
                f.flush()  # the features first, then the counter that declares them complete
                f.attrs["images_done"] = done = e
                f.flush()
                chunks += 1
                now = time.perf_counter()
                if now - last >= PROGRESS_SECONDS or done == n or chunks == 1:
                    last = now
                    rate = (done - start) / max(now - t0, 1e-9)
                    say(f"prepare {args.dataset}: {done}/{n} images ({100 * done / n:.1f}%) | {rate:.1f} images/s | "
                        f"elapsed {_clock(now - t0)} | ETA {_clock((n - done) / max(rate, 1e-9))}")
                if stop_after and chunks >= stop_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        if int(f.attrs["images_done"]) != n:
            raise DataError(f"{partial}: {int(f.attrs['images_done'])} of {n} images extracted; expected all")
