"""What a study was started with, kept beside Tune's state; what --resume may change is checked against it.

A new study writes <storage>/<experiment>/study_request.json as Tune starts: every option as resolved
(`StudyOptions`), the search space's content (as read from its YAML), the number of trials it runs at once
(the cluster decides it when --max-concurrent is not given), and who started it when. `check_resume` reads it
back on --resume, before Ray starts, and compares every option whose field says it is kept
(`Flag.kept` in msdn.study.options: the one place that says which options may change) and the search space's
content (its file may move); any difference is a StudyError (exit 2) naming the flag, the value the study
was started with, the new one, and why it cannot change. The other options may change and take effect.
Studies started before this file existed are resumed unchecked (the study says so).
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import Field, asdict, dataclass
from pathlib import Path
from typing import Any

from msdn.study.options import FIELDS, StudyError, StudyOptions, experiment_path, flag_names
from msdn.yamlfile import read_yaml, shown

RECORD_FILE = "study_request.json"
RECORD_VERSION = 1
SHOWN_DIFFERENCES = 6  # of a search space's differing keys, the first ones named
OPTION_CHARS = 500  # an option's value in a message, cut beyond this (paths and URIs are shown whole up to it)


@dataclass(frozen=True)
class StartRecord:
    """The content of study_request.json."""

    options: dict[str, Any]  # field name -> its resolved value, as JSON
    search_space: Any  # the search space file's content, as JSON
    concurrency: int  # trials run at once (Tune restores this limit on --resume)
    started: str  # who started the study, when
    version: int = RECORD_VERSION


def record_uri(opts: StudyOptions) -> str:
    return f"{experiment_path(opts)}/{RECORD_FILE}"


def as_json(value: Any) -> Any:
    """A value as study_request.json holds it (paths as strings, mapping keys as strings)."""
    return json.loads(json.dumps(value, default=str))


def space_content(path: str | Path) -> Any:
    return as_json(read_yaml(path))


def new_record(opts: StudyOptions, concurrency: int) -> StartRecord:
    started = f"pid {os.getpid()} on host {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return StartRecord(options={f.name: as_json(getattr(opts, f.name)) for f in FIELDS},
                       search_space=space_content(opts.search_space), concurrency=int(concurrency), started=started)


def write_record(opts: StudyOptions, concurrency: int) -> StartRecord:
    """Write study_request.json for a new study (atomically, local path or URI); returns what was written."""
    from msdn.study.refit import write_file

    record = new_record(opts, concurrency)
    write_file(record_uri(opts), json.dumps(asdict(record), indent=1).encode())
    return record


def read_record(opts: StudyOptions) -> StartRecord | None:
    """The study's study_request.json, or None when it has none; a StudyError when it cannot be read."""
    from msdn.study.refit import read_file

    data = read_file(record_uri(opts))
    if data is None:
        return None
    try:
        return StartRecord(**json.loads(data))
    except (ValueError, TypeError) as exc:  # JSON or keys that are not a record's
        raise StudyError(f"--resume: {record_uri(opts)} cannot be read ({shown(str(exc))}); expected the record the "
                         f"study wrote as it started. Remove it to resume without comparing the options") from None


def _value(f: Field, value: Any) -> str:
    """An option's value as the user gave it: a switch given or not, a path or a number as written."""
    flag = f.metadata["flag"]
    if isinstance(value, bool):
        return "given" if value != flag.negated else "not given"
    if value is None:
        return f"not given ({flag.unset})" if flag.unset else "not given"
    return shown(value, OPTION_CHARS, bare=True)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A YAML document as dotted keys (params.lr.low) and their values; lists are values."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def space_differences(old: Any, new: Any) -> list[str]:
    """The keys whose values differ between two search space documents: "params.lr.high 0.01, now 0.02"."""
    before, after = _flat(old), _flat(new)
    missing = object()
    keys = [k for k in dict.fromkeys([*before, *after]) if before.get(k, missing) != after.get(k, missing)]
    return [f"{key or '(the document)'} {shown(before[key]) if key in before else '(absent)'}, now "
            f"{shown(after[key]) if key in after else '(absent)'}" for key in keys]


def differences(record: StartRecord, opts: StudyOptions) -> list[str]:
    """What --resume would change that the study keeps, one phrase each (none: it may resume)."""
    found = []
    for f in FIELDS:
        flag = f.metadata["flag"]
        if not flag.kept or f.name not in record.options:
            continue
        name = flag_names(f)[-1]
        if f.name == "search_space":  # its content, wherever the file is now
            changed = space_differences(record.search_space, space_content(opts.search_space))
            if changed:
                more = f"; ... ({len(changed) - SHOWN_DIFFERENCES} more)" if len(changed) > SHOWN_DIFFERENCES else ""
                found.append(f"{name} {opts.search_space} differs from the file the study was started with "
                             f"({_value(f, record.options[f.name])}): {'; '.join(changed[:SHOWN_DIFFERENCES])}{more} "
                             f"({flag.kept})")
            continue
        old, new = record.options[f.name], as_json(getattr(opts, f.name))
        if old != new:
            found.append(f"{name}: started with {_value(f, old)}, now {_value(f, new)} ({flag.kept})")
    return found


def check_resume(opts: StudyOptions) -> StartRecord | None:
    """With --resume: the study's record, after refusing any kept option that differs (StudyError naming each);
    None for a new study, or for one started before records were kept."""
    if not opts.resume:
        return None
    record = read_record(opts)
    if record is None:
        return None
    found = differences(record, opts)
    if found:
        raise StudyError(f"--resume: the study {opts.experiment!r} was started with other values of options a "
                         f"resumed study cannot change ({record_uri(opts)}): {'; '.join(found)}. Resume it with the "
                         f"values it was started with, or start a new study under another --experiment")
    return record
