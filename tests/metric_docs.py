"""The metric keys docs/mlflow.md defines ("## Every metric key"), for the tests that check a study's keys against it.

One table per kind of run (trial, refit, parent); each row's first cell names keys in backticks; `<k>` in a key stands for each value listed with it
(`<k> ∈ {`S`, `U`}`), any other placeholder (`<param>`) for any name.
"""
from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "mlflow.md"


TABLES = {"trial": "**Trial runs**", "refit": "**Refit runs**", "parent": "**The parent run**"}


def documented_patterns(runs: str) -> list[re.Pattern]:
    """One regular expression per key (or key family) that the table of `runs` (a key of TABLES) defines."""
    text = DOC.read_text()
    section = text[text.index("## Every metric key"):]
    section = section[section.index(TABLES[runs]):]
    table = re.search(r"\n\|.*?\n(?!\|)", section, re.S).group(0)  # the table that follows the heading
    patterns = []
    for row in re.findall(r"^\| (.+?) \| .+ \|$", table, re.M):
        if row in ("key", "---"):
            continue
        values = {name: re.findall(r"`([^`]+)`", listed)
                  for name, listed in re.findall(r"<(\w+)> ∈ \{([^}]*)\}", row)}
        head = re.sub(r"<\w+> ∈ \{[^}]*\}", "", row)
        for key in re.findall(r"`([^`]+)`", head):
            pattern = re.escape(key)
            for name in re.findall(r"<(\w+)>", key):
                options = values.get(name)
                pattern = pattern.replace(re.escape(f"<{name}>"),
                                          f"(?:{'|'.join(map(re.escape, options))})" if options else r"[^\s]+")
            patterns.append(re.compile(pattern))
    return patterns


def undocumented(keys, runs: str) -> list[str]:
    """The keys of `keys` that no row of docs/mlflow.md's table of `runs` (trial, refit, parent) defines, sorted."""
    patterns = documented_patterns(runs)
    return sorted(k for k in set(keys) if not any(p.fullmatch(k) for p in patterns))
