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
