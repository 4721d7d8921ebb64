"""The one error policy of every command line: msdn.train, msdn.evaluate, msdn.prepare, msdn.synthetic,
msdn.data.verify and tune/run.py (see docs/errors.md).

    @cli_entry
    def main(argv: list[str] | None = None) -> int: ...      # raises on bad input, returns an exit code

    if __name__ == "__main__":
        sys.exit(main())

Exit codes: 0 success; 1 an unexpected error (a bug: the traceback is printed), or a study whose trials
all failed; 2 bad input or another expected failure (`error: <one paragraph>` on stderr, no traceback);
3 reserved for tune/run.py (the study finished but the tracking store could not record everything);
130 interrupted (Ctrl+C).

An *expected* failure is an `ExpectedError` (`UsageError` for flags and configuration values,
`CheckpointError` for checkpoint files, `msdn.data.DataError` for data files) or an `OSError` about a
file (permissions, a full disk, a missing file). Everything else is a bug and keeps its traceback.
This module imports nothing heavy (no torch, no Ray), so any entry point can use it.

The one --help layout, too: every parser is a `command_parser` (`HelpFormatter`: each default shown once,
in words where it is None; `examples(...)` for its epilog).
"""
from __future__ import annotations

import argparse
import errno
import functools
import re
import shutil
import sys
import textwrap
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch

EXIT_OK = 0
EXIT_BUG = 1  # an unexpected error (traceback printed), or a study whose trials all failed
EXIT_INPUT = 2  # bad input / an expected failure: one paragraph on stderr, no traceback
EXIT_TRACKING = 3  # reserved for tune/run.py: finished, but the tracking store could not record everything
EXIT_INTERRUPTED = 130  # Ctrl+C (128 + SIGINT), as shells report it

Main = Callable[[Sequence[str] | None], "int | None"]
HELP_WIDTH = 100  # --help is at most this wide (narrower on a narrower terminal)


class HelpFormatter(argparse.HelpFormatter):
    """The --help layout of every command.

    - An option's help gets "(default: X)" only when its text does not already speak of its default and X
      says something: never for None (the help says in words what no value means), a switch's False/True
      or SUPPRESS. So each default appears exactly once.
    - Description and epilog: indented lines (examples) are kept as written; other paragraphs are refilled.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 30,
                 width: int | None = None) -> None:
        if width is None:
            width = min(HELP_WIDTH, shutil.get_terminal_size().columns - 2)
        super().__init__(prog, indent_increment, max_help_position, width)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool)):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text  # a required positional: its default is never used
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # keep val-seen, cuda:1 whole

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        paragraph: list[str] = []

        def flush() -> None:
            if paragraph:
                lines.extend(textwrap.wrap(" ".join(paragraph), width, initial_indent=indent,
                                           subsequent_indent=indent, break_on_hyphens=False))
                paragraph.clear()

        for line in textwrap.dedent(text).splitlines():
            if not line.strip():
                flush()
                lines.append("")
            elif line[0].isspace():
                flush()
                lines.append(indent + line.rstrip())
            else:
                paragraph.append(line.strip())
        flush()
        return "\n".join(lines)


def examples(*commands: str) -> str:
    """An epilog of example commands, one a line (a trailing `# comment` explains it); kept as written."""
    return "examples:\n" + "\n".join("  " + command for command in commands)


def command_parser(prog: str, description: str, *example_commands: str) -> argparse.ArgumentParser:
    """A command's parser in the one --help layout: `prog` as the user types it (run as a package, argv[0]
    would read "__main__.py"), the description, and `example_commands` as the epilog."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter,
                                   epilog=examples(*example_commands))


class ExpectedError(ValueError):
    """A failure the user can fix (bad input, a file that cannot be used); its message says what and where.

    A ValueError, so that code that validates values keeps catching it as one.
    """


class UsageError(ExpectedError):
    """A flag or configuration value that is out of its domain, or flags that do not fit together."""


class CheckpointError(ExpectedError):
    """A checkpoint file that cannot be read, or that does not fit the model, data or run it is used for."""


# A full disk, as the libraries word it when they do not raise OSError(ENOSPC) themselves: an errno in a
# message (pyarrow, h5py's "errno = 28"), SQLite's "database or disk is full".
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXT = re.compile(r"\[Errno (?:%d|%d)\]|errno = (?:%d|%d)\b|No space left on device|Disk quota exceeded|"
                            r"database or disk is full" % (DISK_FULL_ERRNOS * 2))


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it wraps (`cause` for Ray's errors) or was raised while handling, is a full
    disk (or a full quota)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if DISK_FULL_TEXT.search(str(exc)):
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return False


def error_message(exc: BaseException) -> str:
    """The one-paragraph text for an expected failure (an OSError names its file)."""
    if isinstance(exc, OSError) and not isinstance(exc, ExpectedError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno in DISK_FULL_ERRNOS and not exc.filename:
            return (f"{exc.strerror} (a file system this command writes to is full; `df -h` shows which); free "
                    f"space there and run the command again")
        return f"{where}{exc.strerror}"
    return str(exc) or type(exc).__name__


def run_cli(main: Main, argv: Sequence[str] | None = None, *,
            expected: tuple[type[BaseException], ...] = ()) -> int:
    """Run `main(argv)` under the error policy and return the process exit code.

    Expected failures (ExpectedError, OSError, and the extra classes in `expected`) print
    `error: <message>` on stderr and give 2; KeyboardInterrupt gives 130 with one line; anything
    else propagates (Python prints the traceback and exits 1). `main` returns an exit code or None (0).
    """
    try:
        code = main(argv)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (ExpectedError, OSError, *expected) as exc:
        sys.stdout.flush()  # results printed so far come before the error, on a terminal too
        print(f"error: {error_message(exc)}", file=sys.stderr, flush=True)
        return EXIT_INPUT
    return EXIT_OK if code is None else int(code)


def cli_entry(main: Main | None = None, *, expected: tuple[type[BaseException], ...] = ()):
    """Decorator: `main(argv)` runs under `run_cli` (with `expected` as extra expected failures).

    Use as `@cli_entry` or `@cli_entry(expected=(SomeError,))`; the undecorated function stays at
    `main.__wrapped__`, for callers that want the exceptions themselves.
    """

    def decorate(func: Main) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(func)
        def entry(argv: Sequence[str] | None = None) -> int:
            return run_cli(func, argv, expected=expected)

        return entry

    return decorate if main is None else decorate(main)


def device_flag(name: str, flag: str = "--device") -> "torch.device":
    """The torch device for a `--device` value, or a UsageError when it is unknown or unusable here.

    Beyond msdn.device.resolve_device's checks, a tiny allocation proves the device exists (e.g. cuda:3 on a
    machine with one GPU), so the failure comes before any data work instead of in the middle of a run.
    """
    import torch

    from .device import resolve_device

    try:
        device = resolve_device(name)
    except ValueError as exc:
        raise UsageError(str(exc).replace("--device", flag, 1)) from None
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:  # AssertionError: torch built without that backend
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{flag} {name}: not usable on this machine ({first}); expected auto, cpu, or an "
                         "available GPU such as cuda or cuda:0") from None
    return device
