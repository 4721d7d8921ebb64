"""Fixtures shared by the test files.

Tiers: `python -m pytest -m "not slow"` is the fast tier (no Ray cluster, no whole study, no subprocess);
`python -m pytest -q -rs` runs everything, including the `slow` end-to-end studies.
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.register_assert_rewrite("console_checks")  # its asserts say what differed, as a test module's do


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


# Modules whose tests run the longest studies (minutes each on two cores): scheduled first, so that none of them
# starts last and runs alone at the end. Scheduling only: a stale entry costs minutes, never a result.
LONGEST_FIRST = ("test_s3_storage", "test_bench_search", "test_multirun", "test_cluster", "test_readme",
                 "test_warm_start", "test_study_interrupt", "test_study_faults", "test_faults_store")


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject.toml): one worker more than the machine has cores, at most 4. The studies wait on
    subprocesses, Ray and servers much of the time; more workers than that only make every study slower (and
    the timing of the signal and outage tests less like a user's machine)."""
    import os

    return min(len(os.sched_getaffinity(0)) + 1, 4)


def pytest_collection_modifyitems(config, items) -> None:
    """The `slow` tests first, the longest studies first among them: with several workers the long studies start
    early and the fast tests fill the gaps, instead of one long study starting last and running alone."""
    def rank(item) -> tuple[int, int]:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        longest = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
        return (item.get_closest_marker("slow") is None, longest)

    items.sort(key=rank)
