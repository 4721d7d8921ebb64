"""The data layer's one error type and the message builder every validator uses."""
from __future__ import annotations

from pathlib import Path

from ..cli import ExpectedError


class DataError(ExpectedError):
    """A benchmark file is missing or does not hold what MSDN expects; the message says what and where.

    An expected failure (msdn.cli): the commands print its message and exit with 2, without a traceback.
    """


def fail(path: Path, key: str, found: str, expected: str, hint: str = "") -> DataError:
    """'<file>: key '<key>': found <what>; expected <what>.' (+ a hint): the error to raise for a bad value."""
    msg = f"{path}: key '{key}': found {found}; expected {expected}."
    return DataError(msg + (f" {hint}" if hint else ""))
