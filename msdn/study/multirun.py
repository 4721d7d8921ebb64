"""Several benchmarks in one run: one study per benchmark, one Ray session, one table at the end.

    python tune/run.py --dataset cub sun awa2 --data-root /data/zsl --num-samples 40
    python tune/run.py --dataset cub sun awa2 --data-root /data/zsl --num-samples 40 --resume   # after a stop

Each study is exactly what `tune/run.py --dataset X` alone would run: its own search space
(search_spaces/<dataset>.yaml), experiment (msdn-<dataset>-<protocol>), Optuna study, MLflow parent run,
refits and result folder. The run differs in three ways:

- every study's input is checked before the first one starts (a bad benchmark, missing data, a study that
  exists without --resume), and every study's lock is taken for the whole run;
- the slots stay busy across the boundaries: once a study's trials end, its refits (Ray tasks) and the rest
  of its end run in a thread while the next study's trials start; Ray shares the cluster between them;
- with `--transfer`, each study's Optuna search is warm-started from the study before it (its best
  configurations first: values are not comparable across benchmarks; msdn.study.warm_start);
- at the end, `msdn.report`'s table of the finished studies (md, tex, csv and the H figure) is written
  beside them, <storage>/table-<datasets>.{md,tex,csv,png}, and logged on each study's parent run.

`--resume` continues the whole run: a finished study (its study_summary.json says completed) is not run
again, an interrupted one is resumed, one that never started starts. A stop request (Ctrl+C, SIGTERM) stops
the study in hand cleanly (and the refits of the one before, kept for --resume); no later study starts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from pathlib import Path
from typing import Sequence

from msdn.progress import Progress
from msdn.study.conclude import conclude
from msdn.study.console import is_terminal
from msdn.study.interrupt import StopRequests
from msdn.study.lock import study_lock
from msdn.study.logs import StudyLog
from msdn.study.options import StudyOptions, StudyRequest, experiment_path, is_uri, resolve_options, with_defaults
from msdn.study.outcome import StudyOutcome
from msdn.study.report import SUMMARY_FILE
from msdn.study.search_space import SearchSpace
from msdn.study.started import StartRecord, check_resume

def _summary_state(opts: StudyOptions) -> str | None:
    """How the study in opts' folder ended, by its study_summary.json; None without one."""
    if is_uri(opts.storage_path):
        from msdn.study.refit import read_file

        data = read_file(f"{experiment_path(opts)}/{SUMMARY_FILE}")
    else:
        path = Path(experiment_path(opts)) / SUMMARY_FILE
        data = path.read_bytes() if path.is_file() else None
    try:
        return json.loads(data).get("state") if data else None
    except (ValueError, AttributeError):
        return None


@dataclasses.dataclass
class Planned:
    """One study of the run: its checked options, and whether it is already finished (--resume)."""

    opts: StudyOptions
    space: SearchSpace
    started: StartRecord | None
    finished: bool


def plan(requests: Sequence[StudyRequest]) -> list[Planned]:
    """Check every study's input before anything starts. With --resume, a study that never started starts new."""
    from ray import tune

    planned = []
    for request in requests:
        if request.resume:
            if not tune.Tuner.can_restore(experiment_path(with_defaults(request, 1))):
                request = dataclasses.replace(request, resume=False)  # stopped before this study began
        opts, space = resolve_options(request)
        finished = opts.resume and _summary_state(opts) == "completed"
        planned.append(Planned(opts, space, None if finished else check_resume(opts), finished))
    return planned


@dataclasses.dataclass
class RunOutcome:
    """What a multi-benchmark run ended: the outcome of each study it ran (a finished study that --resume skipped
    has none), and whether a stop request cut it short (the studies not begun start with --resume)."""

    outcomes: list[StudyOutcome]
    stopped: bool

    @property
    def interrupted(self) -> bool:
        return self.stopped or any(o.interrupted for o in self.outcomes)

    @property
    def unlogged(self) -> list[str]:
        return [item for o in self.outcomes for item in o.unlogged]


class Conclusion(threading.Thread):
    """A study's end (`conclude`: refits, plots, MLflow) in a thread, while the next study's trials run."""

    def __init__(self, study, fit) -> None:
        super().__init__(name=f"conclude {study.end.opts.experiment}", daemon=True)
        self.study, self.fit = study, fit
        self.outcome: StudyOutcome | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = conclude(self.study.end, self.fit)
        except BaseException as exc:  # raised again in the main thread by `result`
            self.error = exc

    def result(self) -> StudyOutcome:
        """Wait for it (a stop request during the wait reaches it through the shared StopRequests)."""
        while self.is_alive():
            try:
                self.join(timeout=0.5)
            except KeyboardInterrupt:  # the signal handler raised here; the thread sees stop.requested
                continue
        if self.error is not None:
            raise self.error
        return self.outcome


def run_benchmarks(requests: Sequence[StudyRequest], *, progress: Progress = print) -> RunOutcome:
    """Run one study per request (several benchmarks), in order; see the module docstring. A study that fails
    raises, after the study before it has ended."""
    verbose = requests[0].verbose
    live = progress is print and not verbose and is_terminal()
    with StudyLog(verbose) as log:
        progress = log.echo(progress)
        stop = StopRequests(progress).install()
        try:
            return _run_all(requests, stop, progress, log, live)
        finally:
            stop.uninstall()


def _run_all(requests: Sequence[StudyRequest], stop: StopRequests, progress: Progress, log: StudyLog,
             live: bool) -> RunOutcome:
    from msdn.study.runner import prepare_study

    show = progress or (lambda _message: None)
    planned = plan(requests)  # every input checked, before the first study starts
    outcomes: list[StudyOutcome] = []
    pending: Conclusion | None = None
    with contextlib.ExitStack() as locks:
        for study in planned:
            locks.enter_context(study_lock(study.opts))
        show(f"{len(planned)} studies in one run: " + ", ".join(
            f"{p.opts.experiment}{' (finished: not run again)' if p.finished else ''}" for p in planned))
        try:
            for k, item in enumerate(planned):
                if item.finished:
                    continue
                if stop.requested:
                    break
                show(f"\n==== study {k + 1} of {len(planned)}: {item.opts.experiment} ====")
                opts = item.opts
                if opts.transfer and k > 0 and not opts.resume:  # the study before has ended its trials by now
                    opts = dataclasses.replace(opts, warm_start=Path(experiment_path(planned[k - 1].opts)))
                try:
                    study = prepare_study(opts, item.space, item.started, stop, progress, log, live)
                except KeyboardInterrupt:
                    break  # a stop before this study began: it is started by --resume
                try:
                    records, error = study.fit(), None
                except BaseException as exc:
                    records, error = None, exc

                def replay(records=records, error=error):
                    if error is not None:
                        raise error
                    return records

                if pending is not None and (error is not None or stop.requested):
                    outcomes.append(pending.result())  # the study before ends first (its refits see the stop)
                    pending = None
                if error is not None or stop.requested:  # interrupted or failed trials: end it here, no next study
                    outcomes.append(conclude(study.end, replay))
                    break
                if pending is not None:
                    outcomes.append(pending.result())
                pending = Conclusion(study, replay)
                pending.start()
            if pending is not None:
                outcomes.append(pending.result())
                pending = None
        finally:
            if pending is not None:
                pending.result()
    if stop.requested:
        show("the run was stopped: continue it with the same command plus --resume (finished studies are not run "
             "again)")
    else:
        write_table([p.opts for p in planned], outcomes, show)
    return RunOutcome(outcomes, stop.requested)


def table_stem(planned: Sequence[StudyOptions]) -> str:
    """<storage>/table-<dataset>-<dataset>...: where the run's table goes (beside the studies' folders)."""
    return f"{planned[0].storage_path.rstrip('/')}/table-{'-'.join(o.dataset for o in planned)}"


def write_table(planned: Sequence[StudyOptions], outcomes: Sequence[StudyOutcome], show) -> list[str]:
    """The paper table of the run's studies (msdn.report) in every format, plus the H figure; logged on each
    parent run this run ended. Returns the files written."""
    from msdn.report import collect, plot_h, render
    from msdn.study.refit import write_file

    folders = [experiment_path(o) for o in planned]
    if any(is_uri(f) for f in folders):
        show("the run's table: python -m msdn.report reads local result folders; copy them here to build it")
        return []
    results, skipped = collect(folders)
    stem = table_stem(planned)
    written = [write_file(f"{stem}.{fmt}", render(results, skipped, fmt).encode()) for fmt in ("md", "tex", "csv")]
    if results:
        written.append(str(plot_h(results, Path(f"{stem}.png"))))
    show("\n" + render(results, skipped, "md") + f"the run's table: {stem}.{{md,tex,csv}}"
         + (f" and {stem}.png" if results else ""))
    from msdn.study.tracking.store import client

    for outcome in outcomes:
        try:
            c = client(outcome.tracking_uri)
            for path in written:
                c.log_artifact(outcome.parent_run_id, path, "paper_table")
        except Exception as exc:  # the table is on disk either way
            show(f"the run's table was not logged on {outcome.experiment}'s parent run: {exc}")
    return written
