"""The study's searcher: Ray Tune's OptunaSearch, given its starting points the way Optuna takes them.

Ray's `OptunaSearch(points_to_evaluate=...)` insists that every starting point names every searched
parameter ("Dim of point ... do not match"), while the search-space format lets a point name only
some (docs/search_spaces.md: "missing parameters are sampled"). Optuna itself accepts partial points:
`Study.enqueue_trial` fixes the given parameters and samples the rest. So the points are enqueued
here, once, when the Optuna study is created.
"""
from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch


class StudySearcher(OptunaSearch):
    """OptunaSearch whose starting points may be partial (Optuna samples the parameters they omit)."""

    def __init__(self, *, starting_points: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        self._starting_points = [dict(point) for point in starting_points or []]
        super().__init__(**kwargs)

    def _setup_study(self, mode: str | None) -> None:
        super()._setup_study(mode)
        for point in self._starting_points:
            self._ot_study.enqueue_trial(point)
        self._starting_points = []  # enqueued once: the Optuna study (saved with the searcher) keeps them
