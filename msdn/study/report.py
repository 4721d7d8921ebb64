"""What a study prints and the summary file it leaves: the header, the top-trials table, the end.

Plain text for a person reading the terminal. The end is rendered from the study's outcome
(`msdn.study.outcome.StudyOutcome`): `end_lines` for a completed study, `interrupted_lines`, `unlogged_lines`;
`summary_dict` is the same content as JSON for the parent run's `study_summary.json`. The end holds the
refits' table (`refit_lines`): test figures of the tuned and the authors' configuration over seeds, and
their paired differences of H and AUSUC.
"""
from __future__ import annotations

import shlex
import textwrap
from pathlib import Path
from typing import Any, Sequence

from msdn.study.options import StudyOptions, experiment_path
from msdn.study.refit import repeat_command
from msdn.study.outcome import StudyOutcome
from msdn.study.results import BASELINE, DELTA_KEYS, REFIT_KEYS, TUNED, Refits, TrialSummary
from msdn.study.stats import Interval
from msdn.study.search_space import METRICS, SearchSpace

WIDTH = 100  # the widest line the report wraps its own text to (paths and commands are not broken)
COMMAND_WIDTH = 120  # a command to paste stays whole up to this width (then it breaks before its last option)
# Columns of the top-trials table after the parameters: (result key, header, shown as a percentage).
METRIC_COLUMNS = (("S", "S", True), ("U", "U", True), ("H", "H", True),
                  ("grid_alpha", "grid-alpha", False), ("grid_gamma", "grid-gamma", False))


def study_header(opts: StudyOptions, space: SearchSpace, log_file: str | None = None) -> list[str]:
    """The lines that open a study: what runs on which protocol, the search space, where its files go."""
    protocol = ("paper protocol: metrics are TEST metrics every epoch, as the authors; selection on test"
                if opts.protocol == "paper" else "validation protocol: trials never see the test split")
    split = "test" if opts.protocol == "paper" else "validation"
    lines = [
        *_wrap(f"study {opts.experiment!r} on {opts.dataset}, {protocol}", indent=""),
        f"search space {space.path}",
        *_wrap(f"{len(space.param_names)} parameters: {', '.join(space.param_names)}"),
        f"  metric {space.metric} ({space.mode}); ASHA max_t={opts.max_epochs} grace={space.asha.grace_period} "
        f"rf={space.asha.reduction_factor}",
        *_wrap(f"settings grid, chosen after every epoch on the {split} split: {space.describe_grid()}"),
        f"results: {experiment_path(opts)}",
    ]
    if log_file:
        shown = "also shown here (-v)" if opts.verbose else "-v shows them here too"
        lines.append(f"log:     {log_file}")
        lines.append(f"         (Ray, Tune, MLflow and Optuna lines; {shown})")
    return lines


def start_lines(opts: StudyOptions, resources: dict[str, float], concurrency: int, experiment_id: str,
                parent_run_id: str) -> list[str]:
    """The lines once Ray and MLflow are up: the MLflow run, and how many trials run at once on what."""
    budget = opts.num_samples * opts.max_epochs
    return [
        f"MLflow:  {opts.mlflow_uri}, experiment {opts.experiment!r} (id {experiment_id})",
        f"         parent run {parent_run_id}",
        f"trials:  {opts.num_samples}, each at most {opts.max_epochs} epochs (ASHA stops some early: "
        f"≤{budget} trial-epochs)",
        f"         {concurrency} at a time, each on {_fmt(resources['cpu'])} CPU and {_fmt(resources['gpu'])} GPU",
    ]


def command_lines(prefix: str, command: str, width: int = COMMAND_WIDTH) -> list[str]:
    """`prefix + command` on one line, or, when wider than `width`, broken before its last option with a
    shell line continuation, so that it still pastes as one command (never inside a quoted argument)."""
    cut = max(_option_starts(command), default=-1)
    if len(prefix) + len(command) <= width or cut <= 0:
        return [prefix + command]
    return [f"{prefix}{command[:cut]} \\", " " * (len(prefix) + 4) + command[cut + 1:]]


def _option_starts(command: str) -> list[int]:
    """Where " --" begins an option in `command`, not inside a quoted argument (a path's own " --")."""
    starts, quote = [], None
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif command.startswith(" --", i):
            starts.append(i)
    return starts


def wrap_lines(text: str, width: int = WIDTH) -> list[str]:
    """`text` as lines of at most `width` columns, the later ones indented."""
    return _wrap(text, width, indent="")


def _wrap(text: str, width: int = WIDTH, indent: str = "  ") -> list[str]:
    """`text` as indented lines of at most `width` columns (a long word, such as a path, is not broken)."""
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_long_words=False, break_on_hyphens=False)


def format_table(trials: Sequence[TrialSummary], space: SearchSpace, top: int = 10, width: int | None = None) -> str:
    """The `top` trials by their best epoch's study metric, best first; accuracies in %.

    With `width`, a table wider than that is shown as two: the ranks with the metrics, then the ranks with
    the parameters (in more than one table if they do not fit either).
    """
    names = list(space.param_names)
    metrics = list(METRIC_COLUMNS)
    if space.metric not in {key for key, _, _ in metrics}:  # the metric that ranks the trials, shown first
        metrics.insert(0, (space.metric, _title(space.metric), METRICS.get(space.metric) == "max"))
    ranked = [t for t in trials if t.best is not None]
    ranked.sort(key=lambda t: t.best[space.metric], reverse=space.mode == "max")
    lead = ["#", "state", "epochs"]
    rows = [lead + names + [title for _, title, _ in metrics]]
    for i, t in enumerate(ranked[:top], 1):
        rows.append([str(i), t.state, f"{t.best_epoch}/{t.epochs}"]
                    + [_fmt(t.params.get(n)) for n in names]
                    + [f"{100 * t.best[key]:.2f}" if percent else f"{t.best[key]:.2f}"
                       for key, _, percent in metrics])
    if width is None or len(_aligned(rows)[0]) <= width:
        return "\n".join(_aligned(rows))
    n_lead, n_params = len(lead), len(names)
    blocks = [list(range(n_lead)) + list(range(n_lead + n_params, len(rows[0]))), [0]]
    for i in range(n_lead, n_lead + n_params):  # parameters after the rank, as many per table as fit
        if len(blocks[-1]) > 1 and len(_aligned([[row[j] for j in blocks[-1] + [i]] for row in rows])[0]) > width:
            blocks.append([0])
        blocks[-1].append(i)
    blocks = [block for block in blocks if len(block) > 1]
    return "\n\n".join("\n".join(_aligned([[row[j] for j in block] for row in rows])) for block in blocks)


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]


def _title(metric: str) -> str:
    """H_grid -> H@grid: a result key as a column title, as Tune's table and the report's other columns."""
    return metric.replace("_", "@", 1).replace("_", "-")


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


SUMMARY_FILE = "study_summary.json"  # the outcome as JSON: on the parent run and in the study's result folder


def summary_dict(outcome: StudyOutcome) -> dict[str, Any]:
    """The study as JSON-ready data: how it ended, where it is, the best trial, the refits, every trial."""
    return {
        "experiment": outcome.experiment, "dataset": outcome.dataset, "protocol": outcome.protocol,
        "metric": outcome.metric, "experiment_path": outcome.experiment_path, "parent_run_id": outcome.parent_run_id,
        "state": outcome.state, "trial_states": outcome.counts,
        "best": _trial_dict(outcome.best), "best_run": outcome.best_run_name,
        "chosen_settings": outcome.chosen_settings,
        "refit": outcome.refit.to_dict() if outcome.refit else {},
        "refits": outcome.refits.to_dict() if outcome.refits else {},
        "best_config": outcome.best_config_path,
        "log_file": outcome.log_file, "tracking_uri": outcome.tracking_uri, "optuna_journal": outcome.journal,
        "trials": [_trial_dict(t) for t in outcome.trials],
    }


def end_lines(outcome: StudyOutcome) -> list[str]:
    """The lines that close a completed study: trial counts, the best trial, the TEST line, where to look."""
    best = outcome.best
    b = best.best
    lines = [
        f"\n{len(outcome.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items())),
        f"best trial {best.trial_id} at epoch {best.best_epoch}: {outcome.metric}={b[outcome.metric]:.4f} "
        f"(S={b['S']:.4f} U={b['U']:.4f} H={b['H']:.4f}{_ausuc(b, ' ')})\n"
        + "\n".join(_wrap("params " + " ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))),
    ]
    lines.extend(grid_lines(b, outcome.protocol))
    if outcome.refits:
        lines.extend(refit_lines(outcome.refits))
    elif outcome.protocol == "paper":
        lines.append("paper protocol: the figures above are test-split figures selected on the test split (as published)")
    lines.append(f"results: {outcome.experiment_path}")
    if outcome.best_config_path:
        lines.append(f"best configuration: {outcome.best_config_path}")
        lines.extend(command_lines("  rerun it: ", repeat_command(outcome.best_config_path, outcome.dataset,
                                                                  outcome.refit)))
    if outcome.refit and outcome.refit.checkpoint:
        checkpoint = outcome.refit.checkpoint
        lines.append(f"refit checkpoints: {checkpoint.rsplit('/', 2)[0]}/<config>-seed<N>/checkpoint.pt")
        shown = "FILE" if "://" in checkpoint else shlex.quote(checkpoint)  # msdn.evaluate reads local files
        lines.extend(command_lines("  evaluate one: ", f"python -m msdn.evaluate --dataset {outcome.dataset} "
                                                      f"--checkpoint {shown}"))
    from msdn.study.searcher import dashboard_command  # Optuna and Ray: imported when a study ends

    if outcome.journal is not None:
        lines.append(f"Optuna:  {dashboard_command(Path(outcome.journal))}")
        lines.append(f"         (study {outcome.experiment!r}; pip install optuna-dashboard)")
    if outcome.tracking_uri.startswith(("http://", "https://")):
        lines.append(f"MLflow:  open {outcome.tracking_uri} (experiment {outcome.experiment!r})")
    else:
        lines.append(f"MLflow:  mlflow ui --backend-store-uri {shlex.quote(outcome.tracking_uri)}")
        lines.append(f"         (experiment {outcome.experiment!r})")
    return lines


def interrupted_lines(outcome: StudyOutcome) -> list[str]:
    """What the console says of an interrupted study."""
    return [f"study interrupted ({outcome.stop_signal or 'KeyboardInterrupt'}): no test result reported; its MLflow "
            f"runs are closed as KILLED.\n  Continue it with the same command plus --resume"]


def grid_lines(best: dict[str, Any], protocol: str) -> list[str]:
    """The best epoch's settings grid: the (alpha, gamma) it chose and its figures there, with the split they
    were chosen on; under the paper protocol that is the test split, as are the configured-gamma figures."""
    if not isinstance(best.get("H_grid"), (int, float)) or best["H_grid"] != best["H_grid"]:
        return []
    chosen = (f"alpha={best['grid_alpha']:.2f} gamma={best['grid_gamma']:.2f}: S={best['S_grid']:.4f} "
              f"U={best['U_grid']:.4f} H={best['H_grid']:.4f}")
    if protocol == "paper":
        return [f"paper protocol, configured gamma={best['gamma']:.2f}: S={best['S']:.4f} U={best['U']:.4f} "
                f"H={best['H']:.4f} (the epoch selected on TEST)",
                f"paper protocol, grid {chosen} (alpha, gamma and epoch selected on TEST)"]
    return [f"settings grid at the best epoch, chosen on validation: {chosen}\n  (the refit uses this alpha and gamma)"]


REFIT_HEADERS = {"S": "S", "U": "U", "H": "H", "zsl_acc": "ZSL", "AUSUC": "AUSUC"}
CONFIG_LABELS = {TUNED: "tuned", BASELINE: "authors'"}


def _ausuc(metrics: dict[str, Any], sep: str) -> str:
    """` AUSUC=0.1234` after the other figures; nothing for a result of an earlier version, which has none."""
    return f"{sep}AUSUC={metrics['AUSUC']:.4f}" if isinstance(metrics.get("AUSUC"), (int, float)) else ""


def _single_line(label: str, refit) -> str:
    r = refit.metrics
    return (f"{label} (refit on trainval, {refit.epochs} epochs, gamma={r['gamma']:.2f}): "
            f"S={r['S']:.4f} U={r['U']:.4f} H={r['H']:.4f} ZSL={r['zsl_acc']:.4f}{_ausuc(r, ' ')}")


def _cell(interval: Interval) -> str:
    """mean ± sd [low, high], in % of accuracy."""
    return f"{100 * interval.mean:.2f} ± {100 * interval.sd:.2f} [{100 * interval.low:.2f}, {100 * interval.high:.2f}]"


def _delta_lines(delta: Interval, key: str = "H") -> list[str]:
    if delta.n < 2:
        return [f"delta {key} (tuned - authors', same seed): {100 * delta.mean:+.2f} points",
                "  (one seed: no interval; --refit-seeds 3 or more gives one)"]
    verdict = ("the tuned configuration is better" if delta.low > 0 else "the authors' configuration is better"
               if delta.high < 0 else "no clear difference at this number of seeds")
    return [f"delta {key} (tuned - authors', paired by seed): {100 * delta.mean:+.2f} points, 95% interval "
            f"[{100 * delta.low:+.2f}, {100 * delta.high:+.2f}]",
            f"  (t interval of the {delta.n} per-seed differences): {verdict}"]


def refit_lines(refits: Refits) -> list[str]:
    """The refits' test figures: one line per configuration with one seed; with more, a table (a row per
    metric, a column per configuration) of mean ± sd [95% t interval] over seeds; then the paired
    differences of H and AUSUC (DELTA_KEYS), tuned minus authors'."""
    if len(refits.tuned) == 1:
        lines = [_single_line("TEST", refits.tuned[0])]
        if refits.baseline:
            # "authors'", as in the table of several seeds: "authors' configuration" made the line 127 columns
            lines.append(_single_line("TEST, authors'", refits.baseline[0]))
    else:
        seeds = ", ".join(str(s) for s in refits.seeds)
        lines = [f"TEST (refit on trainval, each tested once; seeds {seeds})",
                 "  accuracies in %, mean ± sd [95% t interval over the seeds]:"]
        configs = [(config, results) for config, results in ((TUNED, refits.tuned), (BASELINE, refits.baseline))
                   if results]
        rows = [["", *(f"{CONFIG_LABELS[config]} ({results[0].epochs} epochs)" for config, results in configs)]]
        stats = {config: refits.stats(config) for config, _ in configs}
        rows += [[REFIT_HEADERS[k], *(_cell(stats[config][k]) for config, _ in configs)] for k in REFIT_KEYS
                 if all(k in stats[config] for config, _ in configs)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                                   enumerate(zip(row, widths))).rstrip() for row in rows]
    for key in DELTA_KEYS:
        delta = refits.delta(key)
        if delta is not None:
            lines.extend(_delta_lines(delta, key))
    return lines


def unlogged_lines(outcome: StudyOutcome) -> list[str]:
    """What the tracking store did not record, and where the results are all the same (Tune's storage)."""
    lines = []
    if outcome.unlogged:
        shown = "; ".join(outcome.unlogged[:5]) + (f"; ... ({len(outcome.unlogged) - 5} more)"
                                                   if len(outcome.unlogged) > 5 else "")
        lines.append(f"MLflow: the tracking store {outcome.tracking_uri} did not accept {len(outcome.unlogged)} "
                     f"item(s) before the study ended (last error: {outcome.tracking_error or 'none'}): {shown}. Not "
                     f"logged; every trial's results and checkpoints are in {outcome.experiment_path} (Tune's storage).")
    for item in outcome.dropped:
        lines.append(f"MLflow refused (not retried): {item}")
    return lines
