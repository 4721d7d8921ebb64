"""The docs match the tree: every module under msdn/ is named in docs/architecture.md, and none is too long."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 450


def modules() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "msdn").rglob("*.py") if p.name != "__init__.py")


def test_every_module_is_named_in_the_architecture_page_and_no_other():
    text = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(msdn/[\w/]+\.py)`", text))
    missing = [m for m in modules() if m not in named]
    assert not missing, f"modules not in docs/architecture.md: {missing}"
    assert named <= set(modules()), f"docs/architecture.md names modules that do not exist: {named - set(modules())}"


def test_no_module_is_over_the_limit():
    long = {m: n for m in modules() if (n := len((REPO / m).read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
