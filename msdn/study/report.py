"""What a study prints and the summary file it leaves: the header, the top-trials table, the end.

Plain text for a person reading the terminal; `summary_dict` is the same content as JSON for the
parent run's `study_summary.json`.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from msdn.study.options import StudyOptions
from msdn.study.results import StudyResult, TrialSummary
from msdn.study.search_space import SearchSpace

# Columns of the top-trials table after the parameters: (result key, header, shown as a percentage).
METRIC_COLUMNS = (("S", "S", True), ("U", "U", True), ("H", "H", True),
                  ("H_best_gamma", "H@best-gamma", True), ("best_gamma", "best-gamma", False))


def study_header(opts: StudyOptions, space: SearchSpace) -> list[str]:
    """The lines that open a study: what runs on which protocol, and the search space."""
    label = " [paper protocol: metrics are TEST metrics every epoch, as the authors; selection on test]" \
        if opts.protocol == "paper" else " [validation protocol: trials never see the test split]"
    return [
        f"study {opts.experiment!r} on {opts.dataset}{label}",
        f"search space {space.path}: {', '.join(space.param_names)}; metric {space.metric} ({space.mode}); "
        f"ASHA max_t={opts.max_epochs} grace={space.asha.grace_period} rf={space.asha.reduction_factor}",
    ]


def format_table(trials: Sequence[TrialSummary], space: SearchSpace, top: int = 10) -> str:
    """The `top` trials by their best epoch's study metric, best first; accuracies in %."""
    names = list(space.param_names)
    scored = [t for t in trials if t.best is not None]
    scored.sort(key=lambda t: t.best[space.metric], reverse=space.mode == "max")
    header = ["#", "state", "epochs"] + names + [title for _, title, _ in METRIC_COLUMNS]
    lines = [header]
    for i, t in enumerate(scored[:top], 1):
        lines.append([str(i), t.state, f"{t.best_epoch}/{t.epochs}"]
                     + [_fmt(t.params.get(n)) for n in names]
                     + [f"{100 * t.best[key]:.2f}" if percent else f"{t.best[key]:.2f}"
                        for key, _, percent in METRIC_COLUMNS])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _without_curves(values: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (values or {}).items() if not k.startswith("curve_")}


def _trial_dict(trial: TrialSummary | None) -> dict[str, Any]:
    """A trial as the summary file records it: its fields, the best epoch's values under `metrics`."""
    if trial is None:
        return {"metrics": {}}
    record: dict[str, Any] = {"trial_id": trial.trial_id, "params": trial.params, "error": trial.error,
                              "state": trial.state, "epochs": trial.epochs}
    if trial.best_epoch is not None:
        record["best_epoch"] = trial.best_epoch
    return {**record, "metrics": _without_curves(trial.best)}


def summary_dict(result: StudyResult) -> dict[str, Any]:
    """The study as JSON-ready data: where it is, the best trial, the refit, every trial."""
    return {
        "experiment_path": result.experiment_path, "parent_run_id": result.parent_run_id,
        "best": _trial_dict(result.best),
        "refit": result.refit.to_dict() if result.refit else {},
        "trials": [_trial_dict(t) for t in result.trials],
    }


def end_lines(result: StudyResult, opts: StudyOptions, space: SearchSpace) -> list[str]:
    """The lines that close a finished study: trial counts, the best trial, the TEST line, where to look."""
    counts: dict[str, int] = {}
    for t in result.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    best = result.best
    b = best.best
    lines = [
        f"\n{len(result.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        f"best trial {best.trial_id} at epoch {best.best_epoch}: {space.metric}={b[space.metric]:.4f} "
        f"(S={b['S']:.4f} U={b['U']:.4f} H={b['H']:.4f}); params {json.dumps(best.params, default=str)}",
    ]
    if result.refit:
        r = result.refit.metrics
        lines.append(f"TEST (refit on trainval, {result.refit.epochs} epochs, gamma={r['gamma']:.2f}): "
                     f"S={r['S']:.4f} U={r['U']:.4f} H={r['H']:.4f} ZSL={r['zsl_acc']:.4f}")
    elif opts.protocol == "paper":
        lines.append("paper protocol: the figures above are test-split figures selected on the test split (as published)")
    lines.append(f"results: {result.experiment_path}")
    if result.tracking_uri.startswith(("http://", "https://")):
        lines.append(f"MLflow:  open {result.tracking_uri} (experiment {opts.experiment!r})")
    else:
        lines.append(f"MLflow:  mlflow ui --backend-store-uri {result.tracking_uri}   (experiment {opts.experiment!r})")
    return lines


def unlogged_lines(result: StudyResult, last_error: str | None) -> list[str]:
    """What the tracking store did not record, and where the results are all the same (Tune's storage)."""
    lines = []
    if result.unlogged:
        shown = "; ".join(result.unlogged[:5]) + (f"; ... ({len(result.unlogged) - 5} more)"
                                                  if len(result.unlogged) > 5 else "")
        lines.append(f"MLflow: the tracking store {result.tracking_uri} did not accept {len(result.unlogged)} item(s) "
                     f"before the study ended (last error: {last_error or 'none'}): {shown}. Not logged; every "
                     f"trial's results and checkpoints are in {result.experiment_path} (Tune's storage).")
    for item in result.dropped:
        lines.append(f"MLflow refused (not retried): {item}")
    return lines
