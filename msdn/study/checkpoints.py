"""A trial's checkpoint folders in Tune's storage, and resuming from the right one after a hard kill.

Tune keeps `num_to_keep` checkpoints per trial and deletes older ones as soon as a newer one is
written, while its record of the study (the snapshot `Tuner.restore` reads) is written every few
seconds. A driver killed in between leaves a record that names an older checkpoint, a deleted one,
or none at all, while the trial's folder holds a newer one. Tune refuses to restore a trial whose
named folder is gone, and would redo the epochs after an older one. So:

- before `Tuner.restore`, `fill_deleted_checkpoint_folders` (driver) puts an empty folder where a
  deleted checkpoint was, so that Tune's restore reaches the trainable;
- the trainable resumes from `restorable_checkpoint`: the newest whole checkpoint the folder holds
  (one that a full disk cut short is passed over).

What a checkpoint file holds, and its name, are `msdn.checkpoint`'s; this module knows only Tune's folders.
"""
from __future__ import annotations

import re

from msdn.checkpoint import CHECKPOINT_FILE  # what a trial's checkpoint folder holds (msdn.train.Trainer.save)

_FOLDER = re.compile(r"checkpoint_(\d+)")  # Tune's name for a trial's n-th checkpoint
ZIP_END = b"PK\x05\x06"  # the end-of-archive record of a zip file (torch.save's format)


def _checkpoint_folders(fs, trial_dir: str) -> dict[int, str]:
    """{n: path} of the checkpoint_n folders in `trial_dir` (none when it does not exist)."""
    import pyarrow.fs as pafs

    found = {}
    for info in fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True)):
        match = _FOLDER.fullmatch(info.base_name)
        if info.type == pafs.FileType.Directory and match:
            found[int(match.group(1))] = info.path
    return found


def restorable_checkpoint(named, trial_dir: str, fs):
    """(the checkpoint a trial resumes from or None, whether it is another one than `named`, Tune's choice).

    It is the newest checkpoint in the trial's folder `trial_dir` (on the pyarrow filesystem `fs`),
    by write time: folder numbers restart from Tune's record on resume, so they do not order them.
    FileNotFoundError when Tune names a checkpoint and the folder holds none.
    """
    import pyarrow.fs as pafs
    from ray import tune

    folders = _checkpoint_folders(fs, trial_dir).values()
    files = [info for info in fs.get_file_info([f"{folder}/{CHECKPOINT_FILE}" for folder in folders])
             if info.type == pafs.FileType.File and is_complete(fs, info)]
    if not files:
        if named is None:
            return None, False
        raise FileNotFoundError(f"the trial's checkpoint {named.path} is missing and {trial_dir} holds no "
                                f"other checkpoint ({CHECKPOINT_FILE}) to resume from")
    newest = max(files, key=lambda info: (info.mtime_ns or 0, info.path))
    newest_dir = newest.path.rsplit("/", 1)[0]
    if named is not None:
        named_file = [info for info in files if info.path.rsplit("/", 1)[0] == named.path.rstrip("/")]
        if named_file and (named_file[0].mtime_ns or 0) >= (newest.mtime_ns or 0):
            return named, False
    return tune.Checkpoint(newest_dir, filesystem=fs), True


def is_complete(fs, info) -> bool:
    """Whether a checkpoint file (a pyarrow FileInfo on `fs`) is whole: torch.save writes a zip archive, whose
    end record comes last. A full disk cuts Tune's copy of a checkpoint to storage short; such a file is
    never resumed from (the trial resumes from its previous checkpoint instead)."""
    if not info.size:
        return False
    tail = min(info.size, 1 << 16)
    try:
        with fs.open_input_file(info.path) as f:
            f.seek(info.size - tail)
            return ZIP_END in f.read(tail)
    except OSError:
        return False


def fill_deleted_checkpoint_folders(experiment_uri: str) -> int:
    """Create an empty checkpoint_n folder for each n below a trial's newest that is missing; returns how many.

    Tune's record may name any of them (see the module docstring). An empty folder holds no
    CHECKPOINT_FILE, so `restorable_checkpoint` never resumes from it.
    """
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(experiment_uri)
    created = 0
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        folders = _checkpoint_folders(fs, info.path)
        for n in range(max(folders, default=0)):
            if n not in folders:
                fs.create_dir(f"{info.path}/checkpoint_{n:06d}", recursive=True)
                created += 1
    return created
