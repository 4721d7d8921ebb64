"""msdn/study/checkpoints.py: which checkpoint a trial resumes from after a hard-killed driver.

Real folders on the local pyarrow filesystem (the one Tune uses for a local storage path).
"""
from __future__ import annotations

import pytest

from msdn.checkpoint import CHECKPOINT_FILE


def _zip(content: bytes) -> bytes:
    """A small zip archive, the format torch.save writes (its end record comes last)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("state", content)
    return buffer.getvalue()


STATE = _zip(b"state")


def _checkpoint_folder(trial_dir, name: str, written_at: float):
    import os

    folder = trial_dir / name
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_FILE).write_bytes(STATE)
    os.utime(folder / CHECKPOINT_FILE, (written_at, written_at))
    return folder


def _restorable(named, trial_dir):
    import pyarrow.fs
    from ray import tune

    from msdn.study.checkpoints import restorable_checkpoint

    named = tune.Checkpoint(str(trial_dir / named)) if named else None
    checkpoint, other = restorable_checkpoint(named, str(trial_dir), pyarrow.fs.LocalFileSystem())
    return (checkpoint.path if checkpoint else None), other


def test_the_checkpoint_tune_names_is_used_when_it_is_the_newest(tmp_path):
    _checkpoint_folder(tmp_path, "checkpoint_000000", 1000)
    named = _checkpoint_folder(tmp_path, "checkpoint_000001", 2000)
    assert _restorable("checkpoint_000001", tmp_path) == (str(named), False)


def test_a_fresh_trial_starts_without_a_checkpoint(tmp_path):
    assert _restorable(None, tmp_path / "not-yet-created") == (None, False)


@pytest.mark.parametrize("named", [None, "checkpoint_000000", "checkpoint_000001"])
def test_the_newest_written_checkpoint_wins_over_what_tunes_record_names(tmp_path, named):
    """After a hard-killed driver Tune's record may name no checkpoint, an older one, or one num_to_keep
    deleted; folder numbers restart from the record on resume, so the newest is the last written."""
    _checkpoint_folder(tmp_path, "checkpoint_000000", 1000)
    _checkpoint_folder(tmp_path, "checkpoint_000003", 1500)
    newest = _checkpoint_folder(tmp_path, "checkpoint_000002", 3000)
    (tmp_path / "checkpoint_000009").mkdir()  # an upload that never completed: no checkpoint file
    (tmp_path / "result.json").write_text("{}")
    assert _restorable(named, tmp_path) == (str(newest), True)


def test_a_checkpoint_a_full_disk_cut_short_is_passed_over(tmp_path):
    """Tune's copy to storage stopped by "No space left on device": the newest file is there but incomplete
    (or empty); the trial resumes from the checkpoint before it instead of failing on the fragment."""
    import torch

    named = _checkpoint_folder(tmp_path, "checkpoint_000001", 1000)
    whole = tmp_path / "whole.pt"
    torch.save({"model": torch.zeros(1000)}, whole)
    for fragment in (whole.read_bytes()[:len(whole.read_bytes()) // 2], b""):
        cut = _checkpoint_folder(tmp_path, "checkpoint_000002", 2000)
        (cut / CHECKPOINT_FILE).write_bytes(fragment)
        assert _restorable("checkpoint_000001", tmp_path) == (str(named), False)
        (cut / CHECKPOINT_FILE).unlink()
        cut.rmdir()
    complete = _checkpoint_folder(tmp_path, "checkpoint_000002", 2000)
    (complete / CHECKPOINT_FILE).write_bytes(whole.read_bytes())  # the same file whole: resumed from
    import os

    os.utime(complete / CHECKPOINT_FILE, (2000, 2000))
    assert _restorable("checkpoint_000001", tmp_path) == (str(complete), True)


def test_a_named_checkpoint_with_none_left_in_the_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "checkpoint_000002").mkdir()
    with pytest.raises(FileNotFoundError, match=f"checkpoint_000001 is missing and {tmp_path} holds no other"):
        _restorable("checkpoint_000001", tmp_path)


def test_deleted_checkpoint_folders_below_a_trials_newest_are_filled_with_empty_ones(tmp_path):
    from msdn.study.checkpoints import fill_deleted_checkpoint_folders

    kept = [_checkpoint_folder(tmp_path / "trial_a", f"checkpoint_{n:06d}", 1000 + n) for n in (3, 4)]
    _checkpoint_folder(tmp_path / "trial_b", "checkpoint_000000", 1000)  # nothing deleted before it
    (tmp_path / "trial_c").mkdir()  # no checkpoint yet
    (tmp_path / "experiment_state.json").write_text("{}")
    assert fill_deleted_checkpoint_folders(str(tmp_path)) == 3
    assert sorted(p.name for p in (tmp_path / "trial_a").iterdir()) == [f"checkpoint_{n:06d}" for n in range(5)]
    assert all(not any((tmp_path / "trial_a" / f"checkpoint_{n:06d}").iterdir()) for n in range(3))  # empty
    assert all((k / CHECKPOINT_FILE).read_bytes() == STATE for k in kept)
    assert sorted(p.name for p in (tmp_path / "trial_b").iterdir()) == ["checkpoint_000000"]
    assert not any((tmp_path / "trial_c").iterdir())
    assert fill_deleted_checkpoint_folders(str(tmp_path)) == 0  # nothing left to fill
    # a trial whose record names a filled folder resumes from its newest real checkpoint
    assert _restorable("checkpoint_000001", tmp_path / "trial_a") == (str(kept[1]), True)


def test_filling_a_study_folder_that_does_not_exist_does_nothing(tmp_path):
    from msdn.study.checkpoints import fill_deleted_checkpoint_folders

    assert fill_deleted_checkpoint_folders(str(tmp_path / "none")) == 0
    assert not (tmp_path / "none").exists()
