"""The progress callback shared by the data layer, the trainer, msdn.prepare and the study wiring.

A `Progress` takes one line of text meant for a person (e.g. `print`); None means stay silent.
"""
from __future__ import annotations

import sys
from typing import Callable

Progress = Callable[[str], None] | None


def silent(_message: str) -> None:
    """A Progress that drops every message (what None means, for code that calls unconditionally)."""


def to_stderr(message: str) -> None:
    """A Progress for command lines whose stdout carries results: each message on stderr, at once."""
    print(message, file=sys.stderr, flush=True)
