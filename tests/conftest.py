"""Fixtures shared by the test files.

Tiers: `python -m pytest -m "not slow"` is the fast tier (no Ray cluster, no whole study, no subprocess);
`python -m pytest -q -rs` runs everything, including the `slow` end-to-end studies.
"""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding the synthetic benchmark (seed 0) and its float16 cache, built once per session.

    Read it, never write into it: a test that corrupts, deletes or regenerates files makes its own
    copy under `tmp_path`, so no other test sees its changes.
    """
    from msdn.data import load_benchmark
    from msdn.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic_data")
    ensure_synthetic(root, progress=None)
    load_benchmark("synthetic", root, progress=None)  # the cache, so no test pays for building it
    return root
