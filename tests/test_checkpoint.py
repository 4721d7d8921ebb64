"""msdn/checkpoint.py: the format, the atomic writer, the safe reader and the checks before a resume.

Real files, a real MSDN and its RMSprop; no data needed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msdn.checkpoint import (CHECKPOINT_FILE, CHECKPOINT_VERSION, REQUIRED_KEYS, check_resume, checkpoint_progress,
                             make_checkpoint, model_from_checkpoint, read_checkpoint, write_checkpoint)
from msdn.cli import CheckpointError
from msdn.config import default_config
from msdn.model import MSDN
from msdn.step import build_optimizer


def run(n_attributes: int = 5, seed: int = 0):
    """A run's config, model and optimiser (4 classes, 2 seen, 3 feature channels)."""
    g = torch.Generator().manual_seed(seed)
    config = default_config("synthetic", device="cpu")
    model = MSDN(torch.randn(n_attributes, 6, generator=g), torch.rand(4, n_attributes, generator=g),
                 torch.tensor([True, False, True, False]), 3, generator=g)
    return config, model, build_optimizer(model, config)


def test_a_checkpoint_is_a_plain_dict_written_atomically_and_read_back(tmp_path):
    config, model, optimizer = run()
    rng = np.random.default_rng(3)
    history = [{"epoch": 1, "H": 0.25}]
    state = make_checkpoint(config, model.state_dict(), optimizer.state_dict(), 1, rng.bit_generator.state, history,
                            {"trial_id": "abc"})
    assert tuple(state) == REQUIRED_KEYS + ("extras",) and state["version"] == CHECKPOINT_VERSION
    path = tmp_path / "deep" / "folder" / CHECKPOINT_FILE
    write_checkpoint(path, state)
    assert [p.name for p in path.parent.iterdir()] == [CHECKPOINT_FILE]  # no temporary file left
    back = read_checkpoint(path)
    assert back["config"] == config.to_dict() and back["extras"] == {"trial_id": "abc"}
    epoch, rng_state, hist = checkpoint_progress(back)
    assert (epoch, rng_state, hist) == (1, rng.bit_generator.state, history)
    check_resume(back, config, model, optimizer, path)  # fits the run it came from
    rebuilt = model_from_checkpoint(back, path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[name], tensor, rtol=0, atol=0)


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path):
    config, model, optimizer = run()
    path = tmp_path / CHECKPOINT_FILE
    write_checkpoint(path, make_checkpoint(config, model.state_dict(), optimizer.state_dict(), 1, {}, []))
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_checkpoint(path, {"model": lambda: None})  # torch.save cannot pickle a lambda
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]


def test_a_checkpoint_without_extras_still_resumes(tmp_path):
    """msdn.train's checkpoints written before `extras` existed."""
    config, model, optimizer = run()
    state = make_checkpoint(config, model.state_dict(), optimizer.state_dict(), 2, {"a": 1}, [])
    del state["extras"]
    check_resume(state, config, model, optimizer, tmp_path / "old.pt")


@pytest.mark.parametrize("change, says", [
    (lambda s: s.update(version=2), "checkpoint format version 2; expected 1"),
    (lambda s: s.pop("rng"), "lacks ['rng']; expected a checkpoint written by msdn.train"),
    (lambda s: s.update(history="not json"), "its epoch, RNG state or history cannot be read"),
    (lambda s: s["config"].update(protocol="val"), "is from another run: protocol 'val' (this run: 'paper')"),
    (lambda s: s.update(optimizer={"state": {}}), "its 'optimizer' is not an optimiser state dict"),
])
def test_a_checkpoint_that_cannot_continue_the_run_is_refused_by_name(tmp_path, change, says):
    config, model, optimizer = run()
    state = make_checkpoint(config, model.state_dict(), optimizer.state_dict(), 1, {}, [])
    state["config"] = dict(state["config"])
    change(state)
    with pytest.raises(CheckpointError) as info:
        check_resume(state, config, model, optimizer, tmp_path / "x.pt")
    assert str(info.value).startswith(f"--checkpoint {tmp_path / 'x.pt'}") and says in str(info.value)


def test_a_model_of_another_shape_is_refused(tmp_path):
    config, model, optimizer = run()
    _, other, other_optimizer = run(n_attributes=7)
    state = make_checkpoint(config, other.state_dict(), other_optimizer.state_dict(), 1, {}, [])
    with pytest.raises(CheckpointError, match="its model does not fit this run's MSDN: V: a tensor of shape"):
        check_resume(state, config, model, optimizer, tmp_path / "x.pt")


def test_the_reader_refuses_what_is_not_a_checkpoint_and_names_the_file(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("epoch 3\n")
    with pytest.raises(CheckpointError, match=f"--checkpoint {text}: cannot be read as a checkpoint"):
        read_checkpoint(text)
    with pytest.raises(CheckpointError, match="is a folder; expected a checkpoint file"):
        read_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent.pt: no such file"):
        read_checkpoint(tmp_path / "absent.pt")
