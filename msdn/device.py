"""`--device` strings -> torch devices, with errors that name the flag (shared by train, evaluate, prepare)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> "torch.device":
    """'auto' (a GPU when present, else the CPU), 'cpu', 'cuda', 'cuda:N', or any other torch device string.

    Raises ValueError for a string torch does not know (e.g. 'gpu') and for CUDA on a machine without it.
    """
    import torch  # here, so that `python -m msdn.prepare --help` does not pay for importing torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


# -- device memory budget for the resident feature array ---------------------------------------
# Without a known share of the device (a plain `python -m msdn.train`), keep the features resident when
# they take at most this share of the memory free at the start.
UNMANAGED_FEATURE_SHARE = 0.5
# Activation memory of one forward/backward, per (image x region x value), in 4-byte floats: the float32
# copy of the features, the (B*R, 4I) product and the attention maps, with room for autograd's copies.
# Conservative: bench_step measured about half of this on the CPU at CUB shapes (eval, 500 images).
ACTIVATION_FACTOR = 3


def step_reserve_bytes(n_params: int, batch: int, eval_batch: int, n_regions: int, n_channels: int,
                       n_att: int) -> int:
    """Device memory a trial needs besides the resident features: the model, and its largest batch.

    Parameters, gradients and two RMSprop buffers take 4 float32 copies of the parameters; the largest
    of a training batch and an evaluation batch takes ACTIVATION_FACTOR x images x regions x
    (channels + 4 x attributes) float32 values.
    """
    images = max(batch, eval_batch)
    activations = ACTIVATION_FACTOR * images * n_regions * (n_channels + 4 * n_att) * 4
    return 4 * n_params * 4 + activations


def feature_budget_bytes(share: float | None, total: int, free: int, reserve: int) -> int:
    """Device bytes the feature array may take: the trial's share of the device minus `reserve`.

    `share` is the trial's fraction of the device (Ray's `--gpus-per-trial`; 1 or more is the whole
    device). Several trials packed on one device each see the whole device free when they start
    together; budgeting by share x total (never more than what is free now) keeps K packed trials
    within the device. `share=None` (no scheduler shares the device) keeps the old rule: half the free
    memory, which leaves the other half for the model and its batches (`reserve` is not subtracted).
    """
    if share is None:
        return int(UNMANAGED_FEATURE_SHARE * free)
    return max(0, int(min(min(share, 1.0) * total, free)) - reserve)


def keep_features_on_device(nbytes: int, budget: int) -> bool:
    """Whether a feature array of `nbytes` stays resident on the device (else batches come from pinned host memory)."""
    return 0 < nbytes <= budget


# Host bytes staged per copy when the feature array is moved to the device chunk by chunk.
DEVICE_COPY_CHUNK_BYTES = 256 * 2**20


def copy_to_device(array, device: "torch.device", chunk_bytes: int = DEVICE_COPY_CHUNK_BYTES) -> "torch.Tensor":
    """A (memory-mapped) numpy array as one device tensor, copied in chunks of rows.

    Chunks keep host memory flat: a whole-array `np.ascontiguousarray` would first read a second full
    copy into RAM (9.5 GB for CUB), once per trial that starts.
    """
    import numpy as np
    import torch

    out = torch.empty(array.shape, dtype=torch.from_numpy(array[:0].copy()).dtype, device=device)
    rows = max(1, chunk_bytes // max(1, array[:1].nbytes))
    for start in range(0, array.shape[0], rows):
        chunk = torch.from_numpy(np.ascontiguousarray(array[start:start + rows]))
        out[start:start + rows].copy_(chunk)
    return out


class PinnedBatches:
    """Host batches through pinned memory with non-blocking copies, for features not resident on a GPU.

    Two pinned buffers alternate; before a buffer is refilled, the event recorded after its last copy
    is waited on, so the host never overwrites rows a copy in flight still reads.
    """

    def __init__(self, row_shape: tuple[int, ...], max_rows: int, dtype, device: "torch.device") -> None:
        import torch

        self.device = device
        self.buffers = [torch.empty((max_rows, *row_shape), dtype=dtype, pin_memory=True) for _ in range(2)]
        self.events = [None, None]
        self.turn = 0

    def to_device(self, rows) -> "torch.Tensor":
        """`rows` (a numpy array of at most max_rows rows) on the device, copied from pinned memory."""
        import torch

        i, self.turn = self.turn, 1 - self.turn
        if self.events[i] is not None:
            self.events[i].synchronize()
        staged = self.buffers[i][: rows.shape[0]]
        staged.copy_(torch.from_numpy(rows))
        out = staged.to(self.device, non_blocking=True)
        self.events[i] = torch.cuda.Event()
        self.events[i].record()
        return out
