"""Checkpoints: the one file name, the one format, the one writer and reader, and the checks before use.

A checkpoint is a plain dict (nanoGPT's habit) saved with `torch.save`:

    version    CHECKPOINT_VERSION
    config     the run's TrainConfig as a dict
    model      the model's state dict
    optimizer  the optimiser's state dict
    epoch      epochs trained
    rng        the batch sampler's RNG state, as a JSON string
    history    every epoch's metrics so far, as a JSON string
    extras     who wrote it, e.g. {"trial_id": ...} or {"refit": ...}; {} for msdn.train

`read_checkpoint` loads it with `weights_only=True`, so a file can hold only tensors and plain
containers and reading it runs no code (the RNG state and history are strings for that reason).
`msdn.train.Trainer` writes and continues one, a study's trials and refits store theirs under the
name CHECKPOINT_FILE, and `msdn.evaluate` evaluates one. Every way a file can be unusable is a
CheckpointError that names it as the user gave it (`--checkpoint FILE: ...`).
"""
from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .cli import CheckpointError, UsageError
from .config import FIELD_NAMES, TrainConfig
from .fsutil import atomic_path
from .model import MSDN

CHECKPOINT_FILE = "checkpoint.pt"  # the name of a trial's or a refit's checkpoint in a study's storage
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("version", "config", "model", "optimizer", "epoch", "rng", "history")  # "extras" is optional
# The fields that decide which images train and which classes compete: a checkpoint continues only a run
# that shares them (the others, e.g. --epochs, may change on resume).
RESUME_FIELDS = ("dataset", "protocol", "val_fraction", "val_seed")


# -- the format --------------------------------------------------------------------------------------
def make_checkpoint(config: TrainConfig, model: Mapping[str, Tensor], optimizer: Mapping[str, Any], epoch: int,
                    rng: Mapping[str, Any], history: list[dict[str, Any]],
                    extras: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of a run: its config, the model's and optimiser's state dicts, its progress."""
    return {
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "model": model,
        "optimizer": optimizer,
        "epoch": int(epoch),
        "rng": json.dumps(rng),  # strings: loadable with weights_only=True
        "history": json.dumps(history),
        "extras": dict(extras or {}),
    }


def checkpoint_progress(state: Mapping[str, Any]) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """(epoch, RNG state, history) of a checkpoint dict."""
    return int(state["epoch"]), json.loads(state["rng"]), json.loads(state["history"])


def write_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Save `state` at `path` atomically (a crash mid-write never leaves a truncated file); folders are created.

    On a full disk: OSError(ENOSPC) naming `path`, and no file left. torch.save writes into our file object, so
    the failed write is Python's OSError (given a path, torch raises a RuntimeError that names no cause)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(dict(state), fh)


def read_checkpoint(path: str | Path, flag: str = "--checkpoint") -> Any:
    """torch.load(path, weights_only=True) on the CPU; a CheckpointError that names the file when it cannot."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{flag} {path} is a folder; expected a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any damage shows up as some exception inside the unpickler
        with open(path, "rb") as fh:
            head = fh.read(4)
        raise CheckpointError(f"{flag} {path}: cannot be read as a checkpoint ({_load_failure(exc, head)}); expected "
                              "a file written by msdn.train, or an authors' MSDN state dict saved with torch.save"
                              ) from None


def _load_failure(exc: BaseException, head: bytes) -> str:
    """What torch.load's exception means, in a phrase (its own texts are pages long or bare, e.g. '101').

    `head` is the file's first bytes: a zip signature means torch.save's format, damaged.
    """
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"it refers to {refused.group(1)}, which is refused: only tensors and plain containers are loaded "
                "(torch.load with weights_only=True), because unpickling other objects can run code")
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    if "zip archive" in text or "central directory" in text or head.startswith(b"PK\x03\x04"):
        return "a damaged or truncated zip archive"
    if "Weights only load failed" in text or isinstance(exc, (KeyError, pickle.UnpicklingError, UnicodeDecodeError)):
        return "its bytes are not a pickle or zip archive written by torch.save"
    first = (text.strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# -- what is inside --------------------------------------------------------------------------------
def describe(value: object) -> str:
    """A value in a phrase for an error message: 'a tensor of shape (3, 4)', 'a list'."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def state_dict_problems(state: Mapping[str, Any], expected: Mapping[str, Tensor]) -> list[str]:
    """Missing keys, unexpected keys and tensors whose shape differs from `expected`, one phrase each."""
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}")
    for key, want in expected.items():
        if key in state:
            got = state[key]
            if not isinstance(got, Tensor) or tuple(got.shape) != tuple(want.shape):
                problems.append(f"{key}: {describe(got)}, expected shape {tuple(want.shape)}")
    return problems


def checkpoint_config(ckpt: Mapping[str, Any], path: str | Path, flag: str = "--checkpoint") -> TrainConfig:
    """The TrainConfig stored in one of our checkpoints; CheckpointError when it is absent or invalid."""
    raw = ckpt.get("config")
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{flag} {path}: its 'config' is {describe(raw)}; expected the run's configuration "
                              "(a mapping of TrainConfig fields)")
    unknown = sorted(set(raw) - FIELD_NAMES, key=str)
    if unknown:
        raise CheckpointError(f"{flag} {path}: its config has unknown keys {unknown}; expected TrainConfig fields "
                              "(a checkpoint of another version of msdn-tune?)")
    try:
        return TrainConfig(**raw).validate()
    except UsageError as exc:
        raise CheckpointError(f"{flag} {path}: its config is not valid ({exc})") from None


def required_tensors(state: Mapping[str, Any], keys: tuple[str, ...], where: str, what: str) -> dict[str, Tensor]:
    """The tensors `keys` of a state dict; a CheckpointError listing the missing or non-tensor ones."""
    missing = [k for k in keys if k not in state]
    wrong = [f"{k} ({describe(state[k])})" for k in keys if k in state and not isinstance(state[k], Tensor)]
    if missing or wrong:
        found = sorted(map(str, state))[:12]
        raise CheckpointError(f"{where}: {what} lacks {missing or 'no key'}"
                              f"{'; not tensors: ' + ', '.join(wrong) if wrong else ''}; expected the keys "
                              f"{list(keys)} (found {found})")
    return {k: state[k] for k in keys}


def check_shapes(shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]], where: str, what: str) -> None:
    """CheckpointError when a tensor's shape differs from the one the others imply: name -> (found, expected)."""
    bad = [f"{k} {found} (expected {want})" for k, (found, want) in shapes.items() if tuple(found) != tuple(want)]
    if bad:
        raise CheckpointError(f"{where}: {what} has tensors of inconsistent shapes: {'; '.join(bad)}")


def model_from_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> MSDN:
    """Our MSDN from one of our checkpoints (ckpt['model'], ckpt['config']); CheckpointError when it does not fit."""
    path = Path(path)
    cfg = checkpoint_config(ckpt, path)
    weights = ckpt.get("model")
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"--checkpoint {path}: its 'model' is {describe(weights)}; expected a state dict")
    w = required_tensors(weights, ("V", "att", "seen", "W_1"), f"--checkpoint {path}", "its model state dict")
    if w["V"].dim() != 2 or w["att"].dim() != 2 or w["W_1"].dim() != 2 or w["seen"].dim() != 1:
        raise CheckpointError(f"--checkpoint {path}: V, att, W_1 and seen have shapes {tuple(w['V'].shape)}, "
                              f"{tuple(w['att'].shape)}, {tuple(w['W_1'].shape)} and {tuple(w['seen'].shape)}; "
                              "expected three matrices and a vector")
    check_shapes({"att": (w["att"].shape, (w["seen"].shape[0], w["V"].shape[0]))}, f"--checkpoint {path}",
                 "its model state dict")
    model = MSDN(torch.zeros(w["V"].shape), w["att"], w["seen"], w["W_1"].shape[1], normalize_v=cfg.normalize_v)
    problems = state_dict_problems(weights, model.state_dict())
    if problems:
        raise CheckpointError(f"--checkpoint {path}: its model state dict does not fit MSDN: {'; '.join(problems)}")
    model.load_state_dict(weights)
    return model


# -- may it continue this run? --------------------------------------------------------------------
def check_resume_config(state: Any, config: TrainConfig, source: str | Path) -> None:
    """CheckpointError unless `state` is a checkpoint of msdn.train whose data fields (RESUME_FIELDS) match `config`."""
    where = f"--checkpoint {source}"
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: holds a {type(state).__name__}; expected a checkpoint written by msdn.train")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{where}: lacks {missing}; expected a checkpoint written by msdn.train (an authors' "
                              "state dict can be evaluated with msdn.evaluate, not resumed)")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{where}: checkpoint format version {state['version']!r}; expected {CHECKPOINT_VERSION}")
    if not isinstance(state["model"], Mapping):
        raise CheckpointError(f"{where}: its 'model' is a {type(state['model']).__name__}; expected a state dict")
    saved = checkpoint_config(state, source)
    differ = [f"{k} {getattr(saved, k)!r} (this run: {getattr(config, k)!r})"
              for k in RESUME_FIELDS if getattr(saved, k) != getattr(config, k)]
    if differ:
        flags = "/".join("--" + k.replace("_", "-") for k in RESUME_FIELDS)
        raise CheckpointError(f"{where} is from another run: {'; '.join(differ)}. Continue it with the same {flags}, "
                              "or choose another --checkpoint.")


def check_resume(state: Any, config: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 source: str | Path) -> None:
    """CheckpointError naming `source` when `state` cannot continue the run (`config`, `model`, `optimizer`).

    Checked: the checkpoint's structure and version, the fields that decide the data (RESUME_FIELDS), the
    model's tensors and the optimiser's groups and buffers against the run's, the epoch, RNG and history.
    Nothing is changed either way.
    """
    check_resume_config(state, config, source)
    where = f"--checkpoint {source}"
    problems = state_dict_problems(state["model"], model.state_dict())
    if problems:
        raise CheckpointError(f"{where}: its model does not fit this run's MSDN: {'; '.join(problems)}")
    saved, ours = state["optimizer"], optimizer.state_dict()
    try:
        groups = [list(g["params"]) for g in saved["param_groups"]]
        buffers = dict(saved["state"])
    except (TypeError, KeyError):
        raise CheckpointError(f"{where}: its 'optimizer' is not an optimiser state dict") from None
    if groups != [list(g["params"]) for g in ours["param_groups"]]:
        raise CheckpointError(f"{where}: its optimiser has parameter groups {groups}; this run's has "
                              f"{[list(g['params']) for g in ours['param_groups']]}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, entry in buffers.items():
        for name, value in (entry.items() if isinstance(entry, dict) else ()):
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[int(index)].shape:
                raise CheckpointError(f"{where}: optimiser buffer {name} of parameter {index} has shape "
                                      f"{tuple(value.shape)}; expected {tuple(params[int(index)].shape)}")
    try:
        epoch, rng, history = checkpoint_progress(state)
        ok = epoch >= 0 and isinstance(rng, dict) and isinstance(history, list)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(f"{where}: its epoch, RNG state or history cannot be read; expected what "
                              "Trainer.state_dict writes (an int and two JSON strings)")
