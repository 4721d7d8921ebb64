"""The study's parent run in MLflow: opened (or found again on --resume), then its results.

The parent run holds what describes the whole study: its settings as params, the search space file,
where and with what it ran (tags: git commit, library versions, cluster size), the best trial
(`best_*`), the refits' test figures (`test_*`: the tuned configuration's mean over seeds, with
`test_<k>_mean/_std/_ci_low/_ci_high`; `baseline_test_*` for the authors' configuration; `delta_H_*` and
`delta_AUSUC_*`, the paired differences), the parameter importances (`importance.<param>`), `best_config.yaml`,
the refit checkpoints, the plots (the best trial's settings-grid heat map and the seen-unseen curves among
them), the per-class differences (`per_class/`) and `study_summary.json`. Each refit is also a child run of
its own (tag `msdn.study` = `refit`, `refit.config`, `refit.seed`), named `refit tuned seed=3` or
`refit authors seed=3` (`names.refit_run_name`), with its per-class test accuracies, its datasets, its system
metrics and its logged model (`registry`); the first tuned and authors' seeds are registered as
`msdn-<dataset>@best` and `@authors` (`ParentRun.register_refits`). As the study ends, however it
ends, its run's description (the tag `mlflow.note.content`, shown on the run's page) becomes a short
markdown summary of the study's outcome: `study_description`.

`ParentRun` owns the run (its experiment id, run id) and the study's `TrackingWriter`: its methods queue
what to log on the writer, which sends it in order from a background thread.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

from msdn.metrics import GRID_KEYS, HEADLINE_KEYS
from msdn.progress import Progress
from msdn.study.options import StudyOptions, experiment_path
from msdn.study.outcome import FAILED, StudyOutcome
from msdn.study.per_class import CLASS_COLUMNS, write_csv
from msdn.study.report import SUMMARY_FILE, refit_lines
from msdn.study.results import (BASELINE, COMPLETED, DELTA_KEYS, ERRORED, INTERRUPTED, STOPPED_EARLY, TUNED,
                                RefitResult, Refits, TrialSummary)
from msdn.study.search_space import SearchSpace
from msdn.study.tracking import registry
from msdn.study.tracking.lineage import StudyData, study_data_of
from msdn.study.tracking.names import compact, refit_run_name
from msdn.study.tracking.store import (PARENT_TAG, STORAGE_TAG, STUDY_TAG, client, ensure_experiment, log_artifacts,
                                      log_metrics, log_params_flat)
from msdn.study.tracking.writer import TrackingWriter

# Tags of a refit's child run, besides STUDY_TAG = REFIT_RUN.
REFIT_RUN = "refit"
REFIT_CONFIG_TAG = "refit.config"  # "tuned" or "baseline"
REFIT_SEED_TAG = "refit.seed"
REFIT_NAME_TAG = "refit.name"  # <config>-seed<seed>: finds the run again on --resume
CLASS_FILE = "per_class_accuracy.csv"  # a refit run's per-class test accuracies (msdn.study.per_class)
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)
STUDY_STATE_TAG = "study_state"  # how the study ended: COMPLETED, INTERRUPTED or FAILED
# The parent run's MLflow status for each way a study ends.
END_STATUS = {COMPLETED: "FINISHED", INTERRUPTED: "KILLED", FAILED: "FAILED"}
# Trial states the description always counts, in this order (others only when some trial has them).
COUNTED_STATES = (COMPLETED, STOPPED_EARLY, ERRORED, INTERRUPTED)

PROTOCOL_NOTES = {
    "paper": "paper: trains on trainval and reports TEST metrics every epoch (the authors' procedure; selection on test)",
    "val": "val: trials train on train classes and report validation metrics; the best is refit and tested once",
}


def git_commit() -> str:
    """The commit of this checkout, or "unknown" (an installed copy, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the libraries a study's numbers depend on."""
    import mlflow
    import numpy as np
    import optuna
    import ray
    import torch

    return {"torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__,
            "mlflow": mlflow.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}


def source_tags() -> dict[str, str]:
    """MLflow's own source tags, which fill the runs list's Source column: the entry point (the command's script,
    e.g. tune/run.py), LOCAL, and the git commit of this checkout when there is one."""
    tags = {"mlflow.source.name": sys.argv[0] or "python", "mlflow.source.type": "LOCAL"}
    commit = git_commit()
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def trial_tags(opts: StudyOptions) -> dict[str, str]:
    """Tags every trial's and refit's child run carries besides those the callback sets (the source tags too)."""
    return {"dataset": opts.dataset, "protocol": opts.protocol, STUDY_TAG: "trial", **source_tags()}


def open_parent_run(opts: StudyOptions, space: SearchSpace, cluster: Mapping[str, str]) -> tuple[str, str]:
    """The study's parent run: a new one, or (with --resume) the one this storage path used before.

    `cluster`: tags that say where it runs (`msdn.study.cluster.cluster_tags`). Returns (experiment id, run id);
    the run is RUNNING.
    """
    c = client(opts.mlflow_uri)
    experiment_id = ensure_experiment(opts.mlflow_uri, opts.experiment)
    path = experiment_path(opts)
    if opts.resume:
        runs = c.search_runs([experiment_id], filter_string=f"tags.`{STUDY_TAG}` = 'parent' and "
                             f"tags.`{STORAGE_TAG}` = '{path}'", order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            c.update_run(runs[0].info.run_id, status="RUNNING")
            return experiment_id, runs[0].info.run_id
    tags = {
        STUDY_TAG: "parent", STORAGE_TAG: path, "dataset": opts.dataset, "protocol": opts.protocol,
        "protocol_note": PROTOCOL_NOTES["paper" if opts.protocol == "paper" else "val"],
        "git_commit": git_commit(), **cluster,
        **{f"version.{k}": v for k, v in versions().items()}, **source_tags(),
    }
    run = c.create_run(experiment_id, run_name=f"study-{opts.experiment}", tags=tags)
    run_id = run.info.run_id
    log_params_flat(c, run_id, {
        "dataset": opts.dataset, "protocol": opts.protocol, "num_samples": opts.num_samples,
        "max_epochs": opts.max_epochs, "seed": opts.seed, "metric": space.metric, "mode": space.mode,
        "asha.max_t": space.asha.max_t, "asha.grace_period": space.asha.grace_period,
        "asha.reduction_factor": space.asha.reduction_factor, "search_space": str(space.path),
        "storage_path": path, "refit_seeds": opts.refit_seeds, "baseline": opts.baseline,
    })
    c.log_artifact(run_id, str(space.path), "search_space")
    return experiment_id, run_id


def best_metrics(best: TrialSummary) -> dict[str, float]:
    """The best trial's best epoch as parent-run metrics: its headline and settings-grid figures as `best_*`."""
    metrics = {f"best_{k}": float(best.best[k]) for k in HEADLINE_KEYS + GRID_KEYS
               if isinstance(best.best.get(k), (int, float)) and math.isfinite(best.best[k])}
    metrics["best_epoch"] = float(best.best_epoch)
    return metrics


def refit_metrics(refits: Refits) -> dict[str, float]:
    """The parent run's test figures: `test_<k>` (the tuned mean over seeds; with one seed, its value), per key of
    REFIT_KEYS `test_<k>_mean/_std/_ci_low/_ci_high`, the same as `baseline_test_*`, and per key of DELTA_KEYS
    `delta_<k>_*` (`delta_H_*`, `delta_AUSUC_*`).

    Undefined figures (the sd and interval of one seed) are left out.
    """
    metrics = {f"test_{k}": sum(float(r.metrics[k]) for r in refits.tuned) / len(refits.tuned)
               for k in HEADLINE_KEYS if all(k in r.metrics for r in refits.tuned)}
    groups = [("test", refits.stats(TUNED))]
    if refits.baseline:
        groups.append(("baseline_test", refits.stats(BASELINE)))
    for prefix, stats in groups:
        for key, interval in stats.items():
            metrics.update({f"{prefix}_{key}_{name}": value for name, value in interval.as_dict().items()
                            if name != "n"})
    for key in DELTA_KEYS:
        delta = refits.delta(key)
        if delta is not None:
            metrics.update({f"delta_{key}_{name}": value for name, value in delta.as_dict().items() if name != "n"})
    metrics["refit_epochs"] = float(refits.tuned[0].epochs)
    metrics["refit_seeds"] = float(len(refits.tuned))
    if refits.baseline:
        metrics["baseline_epochs"] = float(refits.baseline[0].epochs)
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


class ParentRun:
    """The study's parent run: its experiment and run ids, and the writer that logs everything of the study.

    Every method only queues on the writer (`TrackingWriter`: in order, on its thread, retried through
    outages); `close` waits for what is queued and returns what could not be logged.
    """

    def __init__(self, writer: TrackingWriter, experiment_id: str, run_id: str, data: StudyData | None = None,
                 dataset: str = "") -> None:
        self.writer = writer
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.data = data  # the datasets the trials and refits read (lineage), None when they could not be read
        self.dataset = dataset

    @classmethod
    def open(cls, opts: StudyOptions, space: SearchSpace, *, cluster: Mapping[str, str],
             progress: Progress = print) -> "ParentRun":
        """A new parent run, or with --resume the one this storage path used before (`open_parent_run`), RUNNING;
        and the study's datasets (`lineage.study_data`), read once, here on the driver."""
        experiment_id, run_id = open_parent_run(opts, space, cluster)
        return cls(TrackingWriter(opts.mlflow_uri, progress=progress), experiment_id, run_id,
                   study_data_of(opts, space, progress), opts.dataset)

    @property
    def trial_inputs(self) -> list:
        """The trials' dataset inputs (MLflowStudyCallback logs them on each trial's run)."""
        return self.data.inputs(self.data.trial) if self.data is not None else []

    def log_best(self, best: TrialSummary) -> None:
        """The best trial's params as `best.*` (the settings grid's chosen alpha and gamma included), its best epoch's
        figures as `best_*` (`best_metrics`), its id as the tag `best_trial_id`."""
        metrics = best_metrics(best)

        def run(c) -> None:
            log_params_flat(c, self.run_id, best.params, prefix="best.")
            log_metrics(c, self.run_id, metrics, step=0)
            c.set_tag(self.run_id, "best_trial_id", str(best.trial_id))

        self.writer.submit("the best trial on the parent run", run)

    def log_refits(self, refits: Refits) -> None:
        """The refits' test figures (`refit_metrics`)."""
        metrics = refit_metrics(refits)
        self.writer.submit("the refits' test figures on the parent run",
                           lambda c: log_metrics(c, self.run_id, metrics, step=0))

    def log_refit_run(self, refit: RefitResult, tags: dict[str, str]) -> None:
        """The refit's child run (its TrainConfig as params, its test figures as metrics, its per-class test
        accuracies as CLASS_FILE), unless one exists.

        Found again by its name tag, so a resumed study that logs its stored refits again makes no duplicate
        (and an attempt the writer retries after an outage completes the run it had begun).
        """
        metrics = {k: float(v) for k, v in {**refit.metrics, "train_time": refit.train_time}.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        experiment_id, parent_run_id = self.experiment_id, self.run_id

        def run(c) -> None:
            found = c.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and "
                                  f"tags.`{REFIT_NAME_TAG}` = '{refit.name}'", max_results=1)
            if found and found[0].info.status == "FINISHED":
                return
            run_id = found[0].info.run_id if found else c.create_run(
                experiment_id, run_name=refit_run_name(refit.config, refit.seed), tags={
                    **tags, PARENT_TAG: parent_run_id, STUDY_TAG: REFIT_RUN, REFIT_NAME_TAG: refit.name,
                    REFIT_CONFIG_TAG: refit.config, REFIT_SEED_TAG: str(refit.seed), "checkpoint": str(refit.checkpoint),
                }).info.run_id
            log_params_flat(c, run_id, refit.train_config)
            log_metrics(c, run_id, metrics, step=refit.epochs)
            if refit.classes:  # none in a result stored by an earlier version
                with tempfile.TemporaryDirectory() as folder:
                    c.log_artifact(run_id, str(write_csv(Path(folder) / CLASS_FILE, refit.classes, CLASS_COLUMNS)))
            c.set_terminated(run_id, status="FINISHED")

        self.writer.submit(f"the child run of refit {refit.name}", run)
        self._log_refit_model(refit)

    def _refit_run_id(self, c, name: str) -> str | None:
        """The run of the refit `name` (<config>-seed<N>), found by its name tag."""
        found = c.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}' and "
                              f"tags.`{REFIT_NAME_TAG}` = '{name}'", max_results=1)
        return found[0].info.run_id if found else None

    def _log_refit_model(self, refit: RefitResult) -> None:
        """On the refit's run: its datasets (trainval, test), its system metrics per epoch (with their times) and its
        logged model (`registry.log_refit_model`). A checkpoint that cannot be a model is said, and skipped."""
        from mlflow.entities import Metric

        data, say = self.data, self.writer.progress or (lambda _line: None)
        system = [Metric(k, float(v), int(sample["timestamp"] * 1000), epoch)
                  for epoch, sample in enumerate(refit.system, 1) for k, v in sample.items() if k != "timestamp"]

        def run(c) -> None:
            run_id = self._refit_run_id(c, refit.name)
            if run_id is None:
                return  # its run was never made (the store refused it): nothing to add to
            if data is not None:
                c.log_inputs(run_id, datasets=data.inputs(data.refit))
            for i in range(0, len(system), 1000):
                c.log_batch(run_id, metrics=system[i:i + 1000])
            test = (data.test.name, data.test.digest) if data is not None and data.test is not None else None
            try:
                registry.log_refit_model(c, self.experiment_id, run_id, refit, dataset=self.dataset,
                                         example=data.example if data is not None else None, test=test)
            except registry.UnusableCheckpoint as exc:  # the checkpoint, not the store: not retried
                say(f"MLflow: refit {refit.name}: no model logged (its checkpoint {exc})")

        self.writer.submit(f"the datasets, system metrics and model of refit {refit.name}", run)

    def register_refits(self, outcome: StudyOutcome) -> None:
        """Register the first tuned seed as `msdn-<dataset>@best` and the first authors' seed as `@authors`
        (`registry.register_refits`); each registration is said on the console."""
        refits, name = outcome.refits, registry.registered_model_name(outcome.dataset)
        if refits is None or not refits.tuned:
            return
        say, store = self.writer.progress or (lambda _line: None), self.writer.tracking_uri

        def run(c) -> None:
            choices = []
            for alias, refit in registry.first_refits(refits.tuned, refits.baseline):
                run_id = self._refit_run_id(c, refit.name)
                if run_id is not None:
                    choices.append((alias, refit, run_id, registry.version_tags(
                        refit, experiment=outcome.experiment, experiment_id=self.experiment_id,
                        parent_run_id=self.run_id, run_id=run_id, best=outcome.best,
                        best_run_name=outcome.best_run_name)))
            registry.register_refits(c, choices, name, say, store)

        self.writer.submit(f"registering the refits' models as {name}", run)

    def log_refit_files(self, best_config: Path, checkpoints: dict[str, Path]) -> None:
        """best_config.yaml at the run's top, each refit checkpoint as refit_checkpoints/<name>/."""
        def run(c) -> None:
            c.log_artifact(self.run_id, str(best_config))
            for name, path in checkpoints.items():
                c.log_artifact(self.run_id, str(path), f"refit_checkpoints/{name}")

        self.writer.submit("best_config.yaml and the refit checkpoints on the parent run", run)

    def log_class_tables(self, tables: list[Path]) -> None:
        """The refits' per-class tables under `per_class/` (files that must outlive the writer)."""
        self.writer.submit("the per-class tables of the parent run",
                           lambda c: log_artifacts(c, self.run_id, tables, "per_class"))

    def log_importances(self, importances: dict[str, float]) -> None:
        """Each searched parameter's importance (Optuna's fANOVA over COMPLETE trials) as `importance.<param>`."""
        metrics = {f"importance.{name}": float(value) for name, value in importances.items()}
        self.writer.submit("the parameter importances on the parent run",
                           lambda c: log_metrics(c, self.run_id, metrics, step=0))

    def log_files(self, plots: list[Path], summary: dict[str, Any], folder: Path) -> None:
        """The plots under `plots/` and the summary as `study_summary.json` (written into `folder` now, which must
        outlive the writer)."""
        path = folder / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2, default=str))

        def run(c) -> None:
            log_artifacts(c, self.run_id, plots, "plots")
            c.log_artifact(self.run_id, str(path))

        self.writer.submit("the plots and study_summary.json of the parent run", run)

    def end(self, outcome: StudyOutcome) -> None:
        """The study's end, however it ended: the tag `study_state`, the description (`study_description`), and the
        run's status (END_STATUS: FINISHED, KILLED or FAILED)."""
        status, note = END_STATUS[outcome.state], study_description(outcome)

        def run(c) -> None:
            c.set_tag(self.run_id, STUDY_STATE_TAG, outcome.state)
            c.set_tag(self.run_id, NOTE_TAG, note)
            c.set_terminated(self.run_id, status=status)

        self.writer.submit(f"ending the parent run as {status}", run, final=True)

    def close(self, timeout: float) -> list[str]:
        """Wait up to `timeout` seconds for everything queued to be logged; returns what was not."""
        return self.writer.close(timeout)


def study_description(outcome: StudyOutcome) -> str:
    """The parent run's description: a short markdown summary of the study's outcome (pure).

    How it ended (and for an interrupted or failed study, what is missing or the error), the trials by state,
    the best trial (by its run name) and configuration, the test figures (the report's `refit_lines`). The UI
    shows the first lines until "Show more": what ended the study and what it found come first.
    """
    state, best, counts = outcome.state, outcome.best, outcome.counts
    lines = [f"**Study `{outcome.experiment}` on {outcome.dataset}: {state}**", ""]
    if state == INTERRUPTED:
        missing = ("the test result: the refits did not finish (the finished ones are kept)" if best is not None
                   else "the best configuration and the test result: the trials did not finish")
        lines.append(f"- **Missing:** {missing}. Continue it with the same command plus `--resume`.")
    elif state == FAILED:
        lines.append(f"- **Failed:** {_first_and_last_line(outcome.error or 'unknown error')}")
    counted = [*COUNTED_STATES, *sorted(set(counts) - set(COUNTED_STATES))]
    total = sum(counts.values())
    planned = f" of {outcome.planned_trials}" if total != outcome.planned_trials else ""  # an interrupted study ran fewer
    lines.append(f"- **Trials:** {total}{planned} (" + ", ".join(f"{counts.get(s, 0)} {s}" for s in counted
                                                                if s in COUNTED_STATES or counts.get(s)) + ")")
    if best is not None and best.best is not None:
        split = "validation" if outcome.protocol == "val" else "test (paper protocol: selected on test)"
        b, metric = best.best, outcome.metric
        lines.append(f"- **Best trial:** `{outcome.best_run_name or best.trial_id}` (trial_id {best.trial_id}), epoch "
                     f"{best.best_epoch} of {best.epochs} trained: {split} {metric} = {b[metric]:.4f} "
                     f"({', '.join(f'{k} {b[k]:.4f}' for k in _companions(metric, b))})")
        order = [n for n in outcome.param_names if n in best.params] + [n for n in best.params
                                                                         if n not in outcome.param_names]
        lines.append("- **Best configuration:** " + ", ".join(f"`{n}={compact(best.params[n], 3)}`" for n in order))
    if outcome.best_config_path:
        lines.append(f"- **best_config.yaml:** `{outcome.best_config_path}`")
    lines.append(f"- **Protocol:** {PROTOCOL_NOTES['paper' if outcome.protocol == 'paper' else 'val']}")
    if outcome.refits:
        lines += ["", "**Test** (refits on trainval, each tested once: the study's one look at the test split):", "",
                  "```text", *refit_lines(outcome.refits), "```"]
    elif state == COMPLETED and outcome.protocol == "paper":
        lines += ["", "**Test:** no refit under the paper protocol: the figures above are test-split figures "
                      "selected on the test split (as published)."]
    elif state == COMPLETED:
        lines += ["", "**Test:** not run (`--no-refit`)."]
    return "\n".join(lines) + "\n"


def _first_and_last_line(text: str, limit: int = 300) -> str:
    """An error on one line: its first line and, for a traceback, its last (the exception)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()] or [""]
    short = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return short if len(short) <= limit else short[:limit - 1] + "…"


def _companions(metric: str, best: Mapping[str, Any]) -> list[str]:
    """The figures that go with the study metric: S and U of the same kind for an H (H_grid: S_grid, U_grid), else
    S, U and H."""
    if metric.startswith("H"):
        keys = [f"S{metric[1:]}", f"U{metric[1:]}"]
        if all(isinstance(best.get(k), (int, float)) for k in keys):
            return keys
    return [k for k in ("S", "U", "H") if k != metric and isinstance(best.get(k), (int, float))]
