"""The YAML files people write: the one reader, the shape checks of what they hold, and the one way their
values appear in error messages.

    from msdn.yamlfile import Checks, YamlFileError, read_yaml, shown
    raw = read_yaml("my.yaml")   # plain dicts, lists, numbers and strings
    f"lr = {shown(raw['lr'])}"   # a repr of at most SHOWN_CHARS characters, whatever the value
    checks = Checks(lambda detail: ValueError(f"my.yaml: {detail}"))
    asha = checks.section("asha", raw["asha"], ("max_t",))  # a mapping with exactly these keys, or an error
    checks.integer("asha.max_t", asha["max_t"])              # "asha.max_t = 2.5; expected an integer"

Every YAML file the package reads goes through `read_yaml`: the `--config` file of `msdn.train`
(`msdn.config.overrides_from_yaml`) and search space files (`msdn.study.search_space`). What YAML allows
but a hand-written configuration never needs is refused, because each lets a small file do harm:

- anchors and aliases (`&a`, `*a`): nested aliases ("billion laughs") expand a few lines into gigabytes
  once anything walks or prints the value; refused at the first one, before any value is built;
- a key given twice in one mapping: YAML keeps the last one silently; refused, naming both lines;
- bytes that are not UTF-8, values nested deeper than MAX_DEPTH, files over MAX_BYTES, integers too long
  for Python to convert: each a one-line YamlFileError instead of a traceback.

A missing file or a folder raises FileNotFoundError / IsADirectoryError, as `open` does, so that each
caller keeps its own message for them. A YamlFileError's message completes "<the file> ...", e.g.
"config file my.yaml " + "is not valid YAML (line 2, column 1: ...)".

`Checks` are the generic checks of the document's shape (a mapping with these keys, a number, an integer,
a low/high pair) with messages for people: the dotted key, what was found (through `shown`), what was
expected, and a "did you mean" for a mistyped key.
"""
from __future__ import annotations

import difflib
import math
import reprlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from .cli import ExpectedError

MAX_BYTES = 1 << 20  # a hand-written configuration is a few KiB
MAX_DEPTH = 50  # nesting levels (the composer recurses: a deeper file would end in RecursionError)
SHOWN_CHARS = 80  # a value shown in a message: at most this many characters
_MAPPING = "expected a YAML mapping of keys to values"  # what every file the package reads holds

_REPR = reprlib.Repr()  # bounded in work as well as length: it never walks more than these many items
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 8, 8, 8
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = SHOWN_CHARS


class YamlFileError(ExpectedError):
    """A file that is not YAML as the project reads it; the message says what and where, not which file."""


def shown(value: Any, limit: int = SHOWN_CHARS, *, bare: bool = False) -> str:
    """`repr(value)` cut to `limit` characters ("…" marks a cut): the only way user input enters a message.

    `bare`: a string as it is, without quotes (a key in a dotted name: params.lr)."""
    text = value if bare and isinstance(value, str) else _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_yaml(path: str | Path) -> Any:
    """The YAML document in `path`, read by the rules above; YamlFileError says what is wrong and where."""
    with Path(path).open("rb") as stream:  # FileNotFoundError, IsADirectoryError: the caller's message
        data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlFileError(f"is larger than {MAX_BYTES // 1024} KiB; expected a hand-written YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise YamlFileError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); expected a YAML "
                            "file saved as UTF-8") from None
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except YamlFileError:
        raise
    except yaml.MarkedYAMLError as exc:
        raise YamlFileError(f"is not valid YAML ({_where(exc.problem_mark)}: {_cut(exc.problem)}"
                            + (f", {_cut(exc.context)}" if exc.context else "")
                            + (f" at {_where(exc.context_mark)}" if exc.context and exc.context_mark else "")
                            + f"); {_MAPPING}") from None
    except yaml.YAMLError as exc:
        raise YamlFileError(f"is not valid YAML ({_cut(str(exc))}); {_MAPPING}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits, refused by int()
        raise YamlFileError(f"holds a value Python cannot convert ({_cut(str(exc))})") from None
    finally:
        loader.dispose()


class Checks:
    """The shape checks of a document `read_yaml` returned; each failure is `error(detail)`, the detail naming the
    dotted key, what was found (bounded by `shown`) and what was expected, with a "did you mean" for keys."""

    def __init__(self, error: Callable[[str], Exception]) -> None:
        self.error = error

    def section(self, key: str, raw: Any, required: tuple = (), optional: tuple | None = None, *,
                expected: str | None = None, nonempty: bool = False) -> Mapping:
        """`raw` as the mapping at `key`; its keys are checked unless both `required` and `optional` are empty/None."""
        if not isinstance(raw, Mapping) or (nonempty and not raw):
            raise self.error(f"{key} = {shown(raw)}; expected "
                             + (expected or f"a mapping with the keys {', '.join(required + (optional or ()))}"))
        if optional is not None or required:
            self.check_keys(f"{key}.", raw, required, optional or ())
        return raw

    def check_keys(self, prefix: str, raw: Mapping, required: tuple, optional: tuple) -> None:
        """Unknown keys (with a did-you-mean) and missing required keys of one mapping."""
        allowed = tuple(required) + tuple(optional)
        for name in raw:
            if name not in allowed:
                raise self.error(f"{prefix}{shown(name, 40, bare=True)} is not a known key; expected one of "
                                 f"{', '.join(allowed)}{suggest(name, allowed)}")
        for name in required:
            if name not in raw:
                raise self.error(f"{prefix}{name} is missing; expected the keys {', '.join(required)}"
                                 + (f" (and optionally {', '.join(optional)})" if optional else ""))

    def number(self, key: str, value: Any, expected: str = "a finite number") -> int | float:
        if (number := as_number(value)) is None:
            raise self.error(f"{key} = {shown(value)} is not a number; expected {expected}")
        return number

    def bounds(self, key: str, raw: Mapping, missing: str = "a number", integer: bool = False) -> tuple[Any, Any]:
        """`key`.low and `key`.high of `raw`: numbers (integers if `integer`), low <= high."""
        bounds = []
        for side in ("low", "high"):
            if side not in raw:
                raise self.error(f"{key}.{side} is missing; expected {missing}")
            value = self.number(f"{key}.{side}", raw[side], "a finite number (write 1.0e-5, not 1e-5 without the "
                                                            "dot, if YAML read it as text)")
            if integer and not float(value).is_integer():
                raise self.error(f"{key}.{side} = {value} is not an integer; expected an integer bound")
            bounds.append(int(value) if integer else value)
        if bounds[0] > bounds[1]:
            raise self.error(f"{key}.low = {bounds[0]} is greater than {key}.high = {bounds[1]}; expected low <= high")
        return bounds[0], bounds[1]

    def integer(self, key: str, value: Any) -> int:
        if (number := as_number(value)) is None or not float(number).is_integer():
            raise self.error(f"{key} = {shown(value)}; expected an integer")
        return int(number)


def as_number(value: Any) -> int | float | None:
    """A finite int or float, or None. Numeric text is accepted: YAML 1.1 reads `1e-5` (no dot) as a string."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def suggest(name: Any, choices: Iterable) -> str:
    """" (did you mean lr?)" when one of `choices` is close to `name`, else ""."""
    close = difflib.get_close_matches(str(name)[:100], [str(c) for c in choices], n=1)  # [:100]: difflib is quadratic
    return f" (did you mean {close[0]}?)" if close else ""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors, aliases, deep nesting and repeated keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise YamlFileError(
                f"uses the {'alias' if sign == '*' else 'anchor'} {sign}{_cut(event.anchor, 30)} at "
                f"{_where(event.start_mark)}; expected every value written out (YAML anchors and aliases are "
                "refused: a few nested aliases expand a small file into gigabytes)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlFileError(f"nests values more than {MAX_DEPTH} levels deep at {_where(event.start_mark)}; "
                                    "expected a flatter file")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if earlier is not key_node:
                    a, b = earlier.start_mark, key_node.start_mark
                    where = (f"lines {a.line + 1} and {b.line + 1}" if a.line != b.line
                             else f"line {a.line + 1} (columns {a.column + 1} and {b.column + 1})")
                    raise YamlFileError(f"has the key {shown(key, 40)} twice in one mapping, at {where}; expected "
                                        "each key once (YAML would keep the last value silently)")
        return super().construct_mapping(node, deep)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an unknown place"


def _cut(text: str | None, limit: int = 160) -> str:
    """PyYAML's own words, on one line and bounded (they may quote a piece of the file)."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
