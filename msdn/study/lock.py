"""The study's lock: one process at a time runs a study, and a second start is refused before it writes anything.

`study_lock(opts)` is held from the end of the input checks to the study's end (`msdn.study.runner`): a file
lock (`msdn.fsutil.held_lock`) on `options.lock_path`, <storage>/<experiment>/study.lock for a local
--storage-path. Object storage (s3://, gs://) has no file locks, so there the lock is a file of this machine's,
in the user's cache folder, named after the study's storage URI: it keeps out a second start on the same
machine (the drivers of `ray job submit` all run on the head node), not one on another machine. The file
holds who runs the study (pid, host, start, command). A second start is a StudyError (exit 2) naming it,
raised before MLflow, Ray or the storage are touched: by `options.check_storage` as the inputs are checked,
or here when two starts meet. The kernel releases the lock when its process dies (even by SIGKILL), so a
killed study never blocks its --resume, and a leftover file means nothing.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import socket
import sys
import time
from typing import Iterator

from msdn.fsutil import LockHeld, held_lock
from msdn.study.options import StudyOptions, lock_path, running_error


def this_process() -> str:
    """Who takes the lock, as a second start shows it: pid, host, start time, command."""
    command = shlex.join(sys.argv) if sys.argv and sys.argv[0] else "run_study"
    return (f"pid {os.getpid()} on host {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{command}")


@contextlib.contextmanager
def study_lock(opts: StudyOptions) -> Iterator[None]:
    """Hold the study's lock for the block, or raise `options.running_error` at once when another process has it."""
    path = lock_path(opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with held_lock(path, this_process()):
            yield
    except LockHeld as held:
        raise running_error(opts, held.holder) from None
