"""File-system helpers shared by the writers of data, checkpoints and prepared features.

`file_lock` makes a second process wait until the first has finished a shared job (building the
float16 cache, generating the synthetic benchmark); `held_lock` refuses a second process at once,
naming the holder (a study's lock). `atomic_path` is the one write-to-temp-then-rename used everywhere
a file must appear complete or not at all: a crash mid-write never leaves a truncated file under its
final name, and a write that fails on a full disk is an OSError(ENOSPC) naming the final file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from .cli import is_disk_full

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


class LockHeld(Exception):
    """Another process holds the lock: `holder` is what it wrote into the lock file ("" if nothing yet)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by another process ({holder or 'who, not yet written'})")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def held_lock(path: str | Path, holder: str) -> Iterator[None]:
    """Exclusive advisory lock, never waited for: LockHeld (with what the holder wrote) when another process has it.

    `holder` (who takes it: pid, host, command) replaces the file's text while the lock is held. The lock goes with
    the process: released when the block ends, and by the kernel when the process dies (even by SIGKILL), so a
    leftover file never blocks anyone. The file is opened close-on-exec: processes started from here do not hold it.
    """
    path = Path(path)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise LockHeld(path, fh.read(2000).strip()) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(holder + "\n")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def lock_holder(path: str | Path) -> str | None:
    """What the process holding the `held_lock` at `path` wrote ("" if nothing yet), or None when none holds it.

    Asks without taking it for longer than a moment, and changes nothing (a missing file is not created)."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read(2000).strip()
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


def temp_name(final: Path) -> Path:
    """A fresh temporary sibling of `final`: <stem>.tmp-<pid>-<random><suffix> (the suffix kept for readers)."""
    return final.with_name(f"{final.stem}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; write the file there.

    When the block ends normally the file is renamed onto `final` (os.replace: atomic on one file system);
    when it raises (anything, KeyboardInterrupt included), the temporary file is removed and `final` is
    left untouched. A full disk (or quota) becomes OSError(ENOSPC) naming `final`: the writers' own errors name
    the temporary file, or nothing (so the command's error names the file the user asked for).
    """
    final = Path(final)
    tmp = temp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except Exception as exc:
        if is_disk_full(exc):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)  # after a successful rename there is nothing left to remove


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 4 MiB blocks (large files never sit in memory whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
