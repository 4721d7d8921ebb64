"""Every use of a private Ray or Ray Tune name, in one place: what each is for and the Ray it was checked on.

Ray keeps these out of its public API, so a Ray upgrade may move or drop them without notice. Each use
below says why no public way does the job, and what the study does when the name is gone (most degrade
to a lesser behaviour rather than fail). Checked against ray 2.60.0 (pyproject.toml bounds ray to the
versions the suite has run on: widen the bound only after running the suite, slow tier included, on the
new version). `tests/test_ray_private.py` fails when a module outside this one uses a private Ray name.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from ray.tune import CLIReporter

CHECKED_RAY_VERSIONS = ("2.60.0",)


# -- Tuner.restore: the live callbacks of this run -------------------------------------------------------------------
def restored_run_config(tuner) -> Any | None:
    """The RunConfig a restored Tuner will run with, to replace the callbacks and reporter Tune unpickled.

    Why: `Tuner.restore` takes no callbacks; it restores the pickled ones (placeholders: ours pickle to
    nothing, since a writer thread cannot be pickled), and the study must install this run's live ones.
    Uses `Tuner._local_tuner.get_run_config()` (ray 2.60.0). None with a Ray client (ray://), whose tuner
    runs remotely, or when the name is gone: the trials then run without the MLflow callback and console.
    """
    local = getattr(tuner, "_local_tuner", None)
    return local.get_run_config() if local is not None else None


# -- the workers' output, forwarded to the driver ------------------------------------------------------------------
def _worker_output_dispatcher():
    """Ray's dispatcher of the workers' forwarded stdout/stderr on the driver, or None on another Ray.

    Why: Ray prints the workers' output on the driver's console through a handler of this dispatcher; the
    study's log file must take those lines instead, and there is no public hook. Uses
    `ray._private.ray_logging.global_worker_stdstream_dispatcher` (ray 2.60.0). Without it the lines stay
    in Ray's session logs (and with -v on the console).
    """
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:
        return None
    return global_worker_stdstream_dispatcher


def add_worker_output_handler(name: str, handler: Callable[[dict[str, Any]], None]) -> bool:
    """Hand every batch of forwarded worker output to `handler` too; False when this Ray has no dispatcher."""
    dispatcher = _worker_output_dispatcher()
    if dispatcher is None:
        return False
    dispatcher.add_handler(name, handler)
    return True


def remove_worker_output_handler(name: str) -> list[tuple[str, Callable]]:
    """Remove the handlers called `name`; returns them (name, handler), to put back with add_worker_output_handler."""
    dispatcher = _worker_output_dispatcher()
    if dispatcher is None:
        return []
    removed = [pair for pair in getattr(dispatcher, "handlers", []) if pair[0] == name]
    dispatcher.remove_handler(name)
    return removed


def autoscaler_events(lines: Iterable[str]) -> Iterator[str] | None:
    """Of the autoscaler's periodic status lines, its events only, as Ray's own printer keeps them.

    Why: the status repeats every few seconds and would flood the log file. Uses
    `ray._private.worker.filter_autoscaler_events` (ray 2.60.0). None when the name is gone: the caller
    then drops the status (it is in Ray's session logs, monitor.log, too).
    """
    try:
        from ray._private.worker import filter_autoscaler_events
    except ImportError:
        return None
    return filter_autoscaler_events(list(lines))


# -- Tune's status table ------------------------------------------------------------------------------------------
class ReporterWithOutput(CLIReporter):
    """A CLIReporter whose table goes to `write_table` instead of stdout.

    Why: CLIReporter prints its table with `print` and offers no way to send it elsewhere; the study
    writes it to its log file. Overrides `CLIReporter._print` (ray 2.60.0: `report` builds the table and
    hands it to `_print`). Should the name go, the table is printed on the console as Tune does by default.
    """

    def _print(self, msg: str) -> None:
        self.write_table(msg)

    def write_table(self, msg: str) -> None:
        print(msg, flush=True)


# -- OptunaSearch's state ------------------------------------------------------------------------------------------
# Why: msdn.study.searcher.StudySearcher changes what OptunaSearch tells Optuna (PRUNED trials, partial starting
# points, a journal); OptunaSearch exposes neither its Optuna study nor its map of Tune trials to Optuna trials.
# Attributes `_ot_study`, `_ot_trials` and `_completed_trials`, set in OptunaSearch.__init__ (ray 2.60.0).
# Without them the study cannot run (the searcher fails at its first trial, with an AttributeError naming them).
def optuna_study(searcher):
    """The optuna.Study an OptunaSearch asks and tells (None before Tune set the searcher up)."""
    return searcher._ot_study


def optuna_trials(searcher) -> dict[str, Any]:
    """Tune trial id -> the optuna.Trial an OptunaSearch asked for it."""
    return searcher._ot_trials


def optuna_space(searcher) -> dict[str, Any]:
    """The search space as an OptunaSearch converted it: parameter name -> Optuna distribution."""
    return searcher._space


def completed_trial_ids(searcher) -> set[str]:
    """The Tune trial ids an OptunaSearch has been told are complete (a set it keeps; add to it as it does)."""
    return searcher._completed_trials


# -- the autoscaler's node types -------------------------------------------------------------------------------------
def reported_cluster_config() -> Any | None:
    """The cluster config an autoscaler reported to the GCS (its node groups and their resources), or None.

    Why: a trial no node type can ever hold must be refused before the study waits for it forever
    (`msdn.study.capacity`), and Ray 2.60 has no public API for the node types an autoscaler may start.
    Uses `ray._private.state.state.get_cluster_config()` (ray 2.60.0; Ray Train and Ray Data read it for the
    same check). None when the name is gone or the call fails: the node types are then "not known".
    """
    try:
        from ray._private.state import state

        return state.get_cluster_config()
    except Exception:  # a private API: its absence or failure means "not known", never a failed study
        return None


# -- what `--address auto` means -------------------------------------------------------------------------------------
def auto_address_resolver() -> Callable[[str], Any] | None:
    """Ray's own resolution of an address such as "auto" (RAY_ADDRESS, or the cluster last started here), or None.

    Why: the study checks that the head answers before `ray.init`, which retries a dead address forever, and
    must resolve "auto" exactly as `ray.init` does. Uses `ray._private.services.canonicalize_bootstrap_address`
    (ray 2.60.0), the function `ray.init` itself calls. None when the name is gone: "auto" is then not checked.
    """
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    return canonicalize_bootstrap_address
