"""The study: Optuna proposes, ASHA stops, Ray runs the trials, MLflow records, the best is refit.

`run_study(StudyOptions(...))` is the whole product's main path; `tune/run.py` only parses flags.
Order of work: validate every input (search space, data, tracking store, storage) -> prepare the
feature cache -> start or join Ray -> MLflow parent run -> `Tuner.fit` (or `Tuner.restore`) ->
top-trials table -> refit on trainval and test once (validation protocol) -> plots and summary on
the parent run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msdn.config import DATASETS, PROTOCOLS, default_config
from msdn.study.search_space import SearchSpace, load_search_space
from msdn.study.trainable import DataSpec, refit_and_test, train_msdn
from msdn.study import tracking

STUDY_TAG = "msdn.study"
STORAGE_TAG = "msdn.storage"


class StudyError(RuntimeError):
    """A study that cannot start: bad input, found before anything expensive."""


class StudyFailed(StudyError):
    """A study that ran but produced no result: every trial failed, or the refit failed."""


@dataclass
class StudyOptions:
    dataset: str
    search_space: Path
    num_samples: int = 12
    max_epochs: int | None = None  # default: the search space's asha.max_t
    max_concurrent: int | None = None  # default: as many trials as the cluster's resources hold
    address: str | None = None  # None: start a local Ray; "auto" or ray://... to join a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 per trial when the cluster has GPUs, else 0
    storage_path: str = "results"
    mlflow_uri: str | None = None  # None: sqlite:///<cwd>/mlflow.db
    experiment: str | None = None  # None: msdn-<dataset>-<protocol>
    protocol: str = "val"
    resume: bool = False
    seed: int = 0
    data_root: str = "data"
    refit: bool = True
    device: str = "auto"
    max_failures: int = 1  # retries of a trial whose worker died (node lost, OOM)


@dataclass
class StudyResult:
    experiment_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trials: list[dict[str, Any]] = field(default_factory=list)  # per trial: id, state, best epoch metrics, params
    best: dict[str, Any] | None = None
    refit: dict[str, Any] | None = None
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# validation before anything expensive


def _is_uri(path: str) -> bool:
    return "://" in path


def resolve_options(opts: StudyOptions) -> tuple[StudyOptions, SearchSpace]:
    """Check every input cheaply; raise StudyError / DataError / SearchSpaceError / TrackingError."""
    from msdn.data import check_data_present

    if opts.dataset not in DATASETS:
        raise StudyError(f"--dataset {opts.dataset!r}: expected one of {', '.join(DATASETS)}")
    if opts.protocol not in PROTOCOLS:
        raise StudyError(f"--protocol {opts.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    space = load_search_space(opts.search_space, opts.dataset)
    for name, value, low in (("--num-samples", opts.num_samples, 1), ("--max-epochs", opts.max_epochs, 1),
                             ("--max-concurrent", opts.max_concurrent, 1)):
        if value is not None and value < low:
            raise StudyError(f"{name} {value}: expected an integer >= {low}")
    if opts.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial {opts.cpus_per_trial}: expected a positive number of CPUs")
    if opts.gpus_per_trial is not None and opts.gpus_per_trial < 0:
        raise StudyError(f"--gpus-per-trial {opts.gpus_per_trial}: expected 0 or a positive (fractional) GPU share")
    check_data_present(opts.dataset, opts.data_root)
    uri = opts.mlflow_uri or tracking.default_tracking_uri()
    tracking.check_tracking_uri(uri)
    storage = opts.storage_path if _is_uri(opts.storage_path) else str(Path(opts.storage_path).resolve())
    experiment = opts.experiment or f"msdn-{opts.dataset}-{opts.protocol}"
    resolved = StudyOptions(**{**asdict(opts), "mlflow_uri": uri, "storage_path": storage, "experiment": experiment,
                               "data_root": str(Path(opts.data_root).resolve()),
                               "max_epochs": opts.max_epochs or space.asha.max_t})
    if resolved.max_epochs < space.asha.grace_period:
        raise StudyError(f"--max-epochs {resolved.max_epochs} is below the ASHA grace period "
                         f"{space.asha.grace_period} of {space.path}; expected --max-epochs >= grace_period")
    _check_storage(resolved)
    return resolved, space


def experiment_path(opts: StudyOptions) -> str:
    return f"{opts.storage_path.rstrip('/')}/{opts.experiment}"


def _check_storage(opts: StudyOptions) -> None:
    from ray import tune

    path = experiment_path(opts)
    exists = tune.Tuner.can_restore(path)
    if opts.resume and not exists:
        raise StudyError(
            f"--resume: no study named {opts.experiment!r} under --storage-path {opts.storage_path} "
            f"(expected {path}/tuner.pkl from an earlier run with the same --experiment and --storage-path)"
        )
    if not opts.resume and exists:
        raise StudyError(
            f"a study named {opts.experiment!r} already exists at {path}; continue it with --resume, "
            f"or choose another --experiment name"
        )


# --------------------------------------------------------------------------------------------
# Ray


def connect_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True)


def trial_resources(opts: StudyOptions) -> dict[str, float]:
    import ray

    gpus_available = ray.cluster_resources().get("GPU", 0)
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else (1.0 if gpus_available else 0.0)
    if gpus > 0 and not gpus_available:
        raise StudyError(f"--gpus-per-trial {gpus}: the Ray cluster has no GPUs")
    return {"cpu": opts.cpus_per_trial, "gpu": gpus}


def default_concurrency(resources: dict[str, float]) -> int:
    import ray

    total = ray.cluster_resources()
    fit = int(total.get("CPU", 1) // resources["cpu"])
    if resources["gpu"] > 0:
        fit = min(fit, int(total.get("GPU", 0) // resources["gpu"]))
    return max(fit, 1)


# --------------------------------------------------------------------------------------------
# MLflow parent run


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import mlflow
    import optuna
    import ray
    import torch

    return {"torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__,
            "mlflow": mlflow.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}


def open_parent_run(opts: StudyOptions, space: SearchSpace) -> tuple[str, str]:
    """The study's parent run: a new one, or (with --resume) the one this storage path used before."""
    c = tracking.client(opts.mlflow_uri)
    experiment_id = tracking.ensure_experiment(opts.mlflow_uri, opts.experiment)
    path = experiment_path(opts)
    if opts.resume:
        runs = c.search_runs([experiment_id], filter_string=f"tags.`{STUDY_TAG}` = 'parent' and "
                             f"tags.`{STORAGE_TAG}` = '{path}'", order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            c.update_run(runs[0].info.run_id, status="RUNNING")
            return experiment_id, runs[0].info.run_id
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    tags = {
        STUDY_TAG: "parent", STORAGE_TAG: path, "dataset": opts.dataset, "protocol": opts.protocol,
        "protocol_note": ("paper: trains on trainval and reports TEST metrics every epoch (the authors' procedure; "
                          "selection on test)") if opts.protocol == "paper" else
                         "val: trials train on train classes and report validation metrics; the best is refit and tested once",
        "git_commit": _git_commit(), "ray.nodes": str(len(nodes)),
        "ray.cpus": str(ray.cluster_resources().get("CPU", 0)), "ray.gpus": str(ray.cluster_resources().get("GPU", 0)),
        **{f"version.{k}": v for k, v in _versions().items()},
    }
    run = c.create_run(experiment_id, run_name=f"study-{opts.experiment}", tags=tags)
    run_id = run.info.run_id
    tracking.log_params_flat(c, run_id, {
        "dataset": opts.dataset, "protocol": opts.protocol, "num_samples": opts.num_samples,
        "max_epochs": opts.max_epochs, "seed": opts.seed, "metric": space.metric, "mode": space.mode,
        "asha.max_t": space.asha.max_t, "asha.grace_period": space.asha.grace_period,
        "asha.reduction_factor": space.asha.reduction_factor, "search_space": str(space.path),
        "storage_path": path,
    })
    c.log_artifact(run_id, str(space.path), "search_space")
    return experiment_id, run_id


# --------------------------------------------------------------------------------------------
# the study


def build_tuner(opts: StudyOptions, space: SearchSpace, resources: dict[str, float], callback, base: dict[str, Any]):
    # Tune's default output dumps every result in full; a compact table of what matters reads better.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpoints every epoch force frequent experiment snapshots by design (resume needs them).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_resources(
        tune.with_parameters(train_msdn, data=DataSpec(opts.dataset, opts.data_root), base=base, study_seed=opts.seed),
        resources,
    )
    if opts.resume:
        return tune.Tuner.restore(experiment_path(opts), trainable, resume_unfinished=True, resume_errored=True)
    searcher = OptunaSearch(points_to_evaluate=space.initial_points(opts.dataset) or None, seed=space.sampler_seed)
    concurrency = opts.max_concurrent or default_concurrency(resources)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=opts.max_epochs,
                              grace_period=space.asha.grace_period, reduction_factor=space.asha.reduction_factor)
    reporter = tune.CLIReporter(
        metric_columns={"training_iteration": "epochs", "S": "S", "U": "U", "H": "H", "H_best_gamma": "H@best-gamma",
                        "loss": "loss"},
        parameter_columns=[p.name for p in space.params], max_report_frequency=20,
        sort_by_metric=True,
    )
    return tune.Tuner(
        trainable,
        param_space=space.tune_param_space(),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            scheduler=scheduler, num_samples=opts.num_samples,
        ),
        run_config=tune.RunConfig(
            name=opts.experiment, storage_path=opts.storage_path, callbacks=[callback],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            progress_reporter=reporter, verbose=1,
        ),
    )


def _trial_rows(results, space: SearchSpace, max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial: its best epoch by the study metric, its parameters and final state."""
    rows = []
    for result in results:
        df = result.metrics_dataframe
        row: dict[str, Any] = {"trial_id": (result.metrics or {}).get("trial_id", ""), "params": dict(result.config or {}),
                               "error": str(result.error) if result.error else None}
        if df is None or df.empty or space.metric not in df:
            row.update(state="errored" if result.error else "no result", epochs=0, best=None)
            rows.append(row)
            continue
        index = df[space.metric].idxmax() if space.mode == "max" else df[space.metric].idxmin()
        best = df.loc[index].to_dict()
        epochs = int(df["training_iteration"].max())
        state = "errored" if result.error else ("completed" if epochs >= max_epochs else "stopped_early")
        row.update(state=state, epochs=epochs, best=best, best_epoch=int(best["training_iteration"]))
        rows.append(row)
    return rows


def _best_row(rows: list[dict[str, Any]], space: SearchSpace) -> dict[str, Any] | None:
    scored = [r for r in rows if r.get("best") is not None and np.isfinite(r["best"][space.metric])]
    if not scored:
        return None
    key = lambda r: r["best"][space.metric]
    return max(scored, key=key) if space.mode == "max" else min(scored, key=key)


def format_table(rows: list[dict[str, Any]], space: SearchSpace, top: int = 10) -> str:
    names = [p.name for p in space.params]
    scored = [r for r in rows if r.get("best") is not None]
    scored.sort(key=lambda r: r["best"][space.metric], reverse=space.mode == "max")
    header = ["#", "state", "epochs"] + names + ["S", "U", "H", "H@best-gamma", "best-gamma"]
    lines = [header]
    for i, r in enumerate(scored[:top], 1):
        b = r["best"]
        lines.append([str(i), r["state"], f"{r['best_epoch']}/{r['epochs']}"]
                     + [_fmt(r["params"].get(n)) for n in names]
                     + [f"{100 * b['S']:.2f}", f"{100 * b['U']:.2f}", f"{100 * b['H']:.2f}",
                        f"{100 * b['H_best_gamma']:.2f}", f"{b['best_gamma']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _install_sigterm_as_interrupt() -> None:
    """SIGTERM (e.g. `kill`, a job scheduler) stops the study like Ctrl+C: state saved, runs closed."""
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def run_study(opts: StudyOptions, *, say=print) -> StudyResult:
    """Run (or resume) a study end to end; see the module docstring for the order of work."""
    from msdn.data import load_benchmark

    opts, space = resolve_options(opts)
    label = " [paper protocol: metrics are TEST metrics every epoch, as the authors; selection on test]" \
        if opts.protocol == "paper" else " [validation protocol: trials never see the test split]"
    say(f"study {opts.experiment!r} on {opts.dataset}{label}")
    say(f"search space {space.path}: {', '.join(p.name for p in space.params)}; metric {space.metric} ({space.mode}); "
        f"ASHA max_t={opts.max_epochs} grace={space.asha.grace_period} rf={space.asha.reduction_factor}")
    load_benchmark(opts.dataset, opts.data_root, progress=say)  # builds the shared feature cache once, here

    connect_ray(opts.address)
    check_cluster_storage_and_data(opts, say)
    resources = trial_resources(opts)
    experiment_id, parent_run_id = open_parent_run(opts, space)
    say(f"MLflow: {opts.mlflow_uri} experiment {opts.experiment!r} (id {experiment_id}), parent run {parent_run_id}")

    base = default_config(opts.dataset, **space.fixed).replace(
        protocol=opts.protocol, data_root=opts.data_root, epochs=opts.max_epochs, device=opts.device,
    ).to_dict()
    callback = tracking.MLflowStudyCallback(
        opts.mlflow_uri, experiment_id, parent_run_id, opts.max_epochs,
        tags={"dataset": opts.dataset, "protocol": opts.protocol, STUDY_TAG: "trial"},
    )
    tuner = build_tuner(opts, space, resources, callback, base)
    _install_sigterm_as_interrupt()
    try:
        results = tuner.fit()
    except BaseException:
        # Never leave runs RUNNING: a crashed driver's study is resumable, its runs are closed.
        callback.close_open_runs("FAILED")
        tracking.client(opts.mlflow_uri).set_terminated(parent_run_id, status="FAILED")
        raise

    result = StudyResult(experiment_path(opts), opts.mlflow_uri, experiment_id, parent_run_id)
    c = tracking.client(opts.mlflow_uri)
    rows = _trial_rows(results, space, opts.max_epochs)
    result.trials = rows
    unfinished = len(results) - results.num_terminated - results.num_errors
    result.interrupted = unfinished > 0
    result.errors = [r["error"] for r in rows if r["error"]]

    if result.interrupted:
        closed = callback.close_open_runs("KILLED")
        c.set_tag(parent_run_id, "study_state", "interrupted")
        c.set_terminated(parent_run_id, status="KILLED")
        say(f"study interrupted with {unfinished} unfinished trials ({closed} MLflow runs closed as KILLED); "
            f"continue it with the same command plus --resume")
        return result

    callback.close_open_runs("KILLED")
    best = _best_row(rows, space)
    say("\ntop trials (best epoch of each, accuracies in %):\n" + format_table(rows, space))
    if best is None:
        c.set_tag(parent_run_id, "study_state", "failed")
        c.set_terminated(parent_run_id, status="FAILED")
        first = result.errors[0] if result.errors else "no trial reported a result"
        raise StudyFailed(f"every trial failed; the first error:\n{first}")
    result.best = best
    _log_best(c, parent_run_id, best, space)

    with tempfile.TemporaryDirectory() as tmp:
        artifacts = _plots(Path(tmp), rows, best, space, opts)
        if opts.refit and opts.protocol == "val":
            result.refit = _refit(opts, base, best, resources, say)
            _log_refit(c, parent_run_id, result.refit)
            artifacts.append(_refit_plot(Path(tmp), result.refit, opts))
        tracking.log_artifacts(c, parent_run_id, artifacts, "plots")
        summary = Path(tmp) / "study_summary.json"
        summary.write_text(json.dumps(_summary_dict(result), indent=2, default=str))
        c.log_artifact(parent_run_id, str(summary))
    c.set_tag(parent_run_id, "study_state", "completed")
    c.set_terminated(parent_run_id, status="FINISHED")
    _print_end(result, opts, space, say)
    return result


def _log_best(c, run_id: str, best: dict[str, Any], space: SearchSpace) -> None:
    tracking.log_params_flat(c, run_id, best["params"], prefix="best.")
    b = best["best"]
    metrics = {f"best_{k}": float(b[k]) for k in ("S", "U", "H", "zsl_acc", "H_best_gamma", "best_gamma") if k in b}
    metrics["best_epoch"] = float(best["best_epoch"])
    tracking.log_metrics(c, run_id, metrics, step=0)
    c.set_tag(run_id, "best_trial_id", str(best["trial_id"]))


def _refit(opts: StudyOptions, base: dict[str, Any], best: dict[str, Any], resources: dict[str, float], say) -> dict[str, Any]:
    import ray

    epochs = int(best["best_epoch"])
    seed = int(best["best"].get("trial_seed", opts.seed))  # the best trial's own seed
    say(f"\nrefit: training the best configuration on trainval for {epochs} epochs (its best epoch on validation), "
        f"then evaluating once on the test split ...")
    task = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"], max_retries=opts.max_failures)(refit_and_test)
    try:
        return ray.get(task.remote(base, best["params"], epochs, seed, DataSpec(opts.dataset, opts.data_root)))
    except Exception as exc:  # the refit is the study's result: its failure fails the study
        raise StudyFailed(f"the refit of the best configuration failed: {exc}") from exc


def _log_refit(c, run_id: str, refit: dict[str, Any]) -> None:
    metrics = {f"test_{k}": float(refit[k]) for k in ("S", "U", "H", "zsl_acc", "H_best_gamma", "best_gamma")}
    metrics["refit_epochs"] = float(refit["epochs"])
    tracking.log_metrics(c, run_id, metrics, step=0)


def _plots(tmp: Path, rows, best, space: SearchSpace, opts: StudyOptions) -> list[Path]:
    from msdn.study.plots import plot_calibration_curve, plot_optimisation_history

    b = best["best"]
    paths = []
    if all(isinstance(b.get(k), (list, tuple)) for k in ("curve_gamma", "curve_S", "curve_U", "curve_H")):
        split = "validation" if opts.protocol == "val" else "test"
        paths.append(plot_calibration_curve(
            b["curve_gamma"], b["curve_S"], b["curve_U"], b["curve_H"], tmp / "calibration_curve_best_trial.png",
            title=f"{opts.dataset}: best trial, epoch {best['best_epoch']} ({split} split)",
            chosen_gamma=float(best["params"].get("gamma", b.get("gamma", 2.0))),
        ))
    ordered = [r for r in rows if r.get("best") is not None]
    if ordered:
        paths.append(plot_optimisation_history(
            [r["best"][space.metric] for r in ordered], tmp / "optimisation_history.png",
            metric=space.metric, mode=space.mode, title=f"{opts.experiment}: {len(ordered)} trials",
            stopped_early=[r["state"] == "stopped_early" for r in ordered],
        ))
    return paths


def _refit_plot(tmp: Path, refit: dict[str, Any], opts: StudyOptions) -> Path:
    from msdn.study.plots import plot_calibration_curve

    return plot_calibration_curve(refit["curve_gamma"], refit["curve_S"], refit["curve_U"], refit["curve_H"],
                                  tmp / "calibration_curve_refit_test.png",
                                  title=f"{opts.dataset}: refit on trainval, test split (for reading, not selection)",
                                  chosen_gamma=refit["gamma"])


def _summary_dict(result: StudyResult) -> dict[str, Any]:
    strip = lambda d: {k: v for k, v in (d or {}).items() if not k.startswith("curve_")}
    return {
        "experiment_path": result.experiment_path, "parent_run_id": result.parent_run_id,
        "best": {**{k: v for k, v in (result.best or {}).items() if k != "best"}, "metrics": strip((result.best or {}).get("best"))},
        "refit": strip(result.refit),
        "trials": [{**{k: v for k, v in t.items() if k != "best"}, "metrics": strip(t.get("best"))} for t in result.trials],
    }


def _print_end(result: StudyResult, opts: StudyOptions, space: SearchSpace, say) -> None:
    counts: dict[str, int] = {}
    for t in result.trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    say(f"\n{len(result.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    b = result.best["best"]
    say(f"best trial {result.best['trial_id']} at epoch {result.best['best_epoch']}: {space.metric}={b[space.metric]:.4f} "
        f"(S={b['S']:.4f} U={b['U']:.4f} H={b['H']:.4f}); params {json.dumps(result.best['params'], default=str)}")
    if result.refit:
        r = result.refit
        say(f"TEST (refit on trainval, {r['epochs']} epochs, gamma={r['gamma']:.2f}): S={r['S']:.4f} U={r['U']:.4f} "
            f"H={r['H']:.4f} ZSL={r['zsl_acc']:.4f}")
    elif opts.protocol == "paper":
        say("paper protocol: the figures above are test-split figures selected on the test split (as published)")
    say(f"results: {result.experiment_path}")
    if result.tracking_uri.startswith(("http://", "https://")):
        say(f"MLflow:  open {result.tracking_uri} (experiment {opts.experiment!r})")
    else:
        say(f"MLflow:  mlflow ui --backend-store-uri {result.tracking_uri}   (experiment {opts.experiment!r})")


# --------------------------------------------------------------------------------------------
# multi-node clusters: storage and data every node reaches


def _on_every_node(fn, *args) -> dict[str, Any]:
    """Run `fn(*args)` once on each alive node; returns {node id: result or the exception text}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    remote = ray.remote(num_cpus=0)(fn)
    refs = {node: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(*args)
            for node in nodes}
    out = {}
    for node, ref in refs.items():
        try:
            out[node] = ray.get(ref)
        except Exception as exc:  # a node that cannot do it is reported, not fatal here
            out[node] = exc
    return out


def _probe_exists(path: str) -> bool:
    return Path(path).is_file()


def _prepare_node_data(dataset: str, data_root: str) -> str:
    """Validate the data and build (once, under the cache's file lock) the memory-mapped cache on this node."""
    import socket

    from msdn.data import load_benchmark

    bench = load_benchmark(dataset, data_root, progress=None)
    return f"{socket.gethostname()}: {bench.features.shape[0]} images"


def check_cluster_storage_and_data(opts: StudyOptions, say=print) -> None:
    """On a multi-node cluster, refuse node-local storage and make sure every node has the data."""
    import ray
    import uuid

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    if not _is_uri(opts.storage_path):
        probe = Path(opts.storage_path) / f".msdn-storage-probe-{uuid.uuid4().hex}"
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("written by the study driver; every node must see this file\n")
        try:
            seen = _on_every_node(_probe_exists, str(probe))
        finally:
            probe.unlink(missing_ok=True)
        blind = [node[:12] for node, ok in seen.items() if ok is not True]
        if blind:
            raise StudyError(
                f"--storage-path {opts.storage_path} is local to the driver's node: {len(blind)} of {len(seen)} "
                f"nodes of this {len(nodes)}-node cluster cannot see it (node ids {', '.join(blind)}). Tune keeps "
                f"results and checkpoints there, so every node must reach it: expected a shared filesystem "
                f"path mounted at the same place on every node (NFS, EFS, a Kubernetes volume), or an "
                f"s3:// / gs:// URI."
            )
    results = _on_every_node(_prepare_node_data, opts.dataset, opts.data_root)
    failed = {node[:12]: str(r) for node, r in results.items() if isinstance(r, Exception)}
    if failed:
        first = next(iter(failed.items()))
        raise StudyError(
            f"--data-root {opts.data_root}: {len(failed)} of {len(results)} nodes cannot load the {opts.dataset} "
            f"data (node {first[0]}: {first[1]}). Expected the data root on a filesystem every node mounts at the "
            f"same path; each node builds or reuses the float16 cache there under a file lock."
        )
    say(f"cluster of {len(nodes)} nodes: storage and data reachable from every node "
        f"({'; '.join(str(r) for r in results.values())})")
