"""A small real filesystem for full-disk tests: a tmpfs of a given size (root only), or a skip saying why."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "4m") mounted at `folder`, unmounted afterwards; skips where mounting is refused.

    Without root (or where the sandbox refuses the mount) there is no honest substitute: RLIMIT_FSIZE
    (`ulimit -f`) gives EFBIG and a signal, not ENOSPC.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a small real filesystem needs root (mount -t tmpfs); RLIMIT_FSIZE would give EFBIG, not ENOSPC")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                         text=True)
    if out.returncode:
        pytest.skip(f"mount -t tmpfs is refused here ({out.stderr.strip()}): no small filesystem to fill")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def grow(folder: Path, size: str) -> None:
    """Free space the honest way: the same filesystem, remounted larger."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)
