"""File-system helpers shared by the writers of data, checkpoints and prepared features.

`file_lock` makes a second process wait until the first has finished a shared job (building the
float16 cache, generating the synthetic benchmark). `atomic_path` is the one write-to-temp-then-rename
used everywhere a file must appear complete or not at all: a crash mid-write never leaves a truncated
file under its final name.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from pathlib import Path
from typing import Iterator

TMP_MARK = ".tmp-"  # every temporary name contains this; cleaners of stale leftovers match it


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock: a second process waits here until the first has finished."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def temp_name(final: Path) -> Path:
    """A fresh temporary sibling of `final`: <stem>.tmp-<pid>-<random><suffix> (the suffix kept for readers)."""
    return final.with_name(f"{final.stem}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; write the file there.

    When the block ends normally the file is renamed onto `final` (os.replace: atomic on one file system);
    when it raises (anything, KeyboardInterrupt included), the temporary file is removed and `final` is
    left untouched.
    """
    final = Path(final)
    tmp = temp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)  # after a successful rename there is nothing left to remove


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 4 MiB blocks (large files never sit in memory whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
