"""The refits' models in MLflow: a logged model on each refit's run, and the winner in the Model Registry.

Each refit's run gets an MLflow 3 logged model (`log_refit_model`): the pyfunc of `msdn.mlflow_model`, whose
artifact is the refit's checkpoint, with its signature and an input example, the refit's configuration as its
params and its test figures linked to it (and to the test split's dataset). It is written with the study's
client like everything else: the logged model is created for the run, the model folder saved locally and
uploaded as its artifacts, the run's outputs name it, and it is finalised READY (what `mlflow.pyfunc.log_model`
does for an active run; the writer's thread has none, and the fluent API would take the process's tracking URI).

After the refits, `register_refits` registers two of them in the Model Registry as new versions of
`msdn-<dataset>` (`registered_model_name`):

    best      the tuned configuration's FIRST seed: the best trial's own seed, fixed before any test figure
              existed (never a seed chosen by its test figures)
    authors   the authors' configuration's first seed (the same seed)

Each alias moves to the new version; the version's tags say where it came from (`version_tags`: the study,
its MLflow experiment and parent run, the best trial and its run, the refit, its seed, epochs, alpha and gamma,
its test figures). Every step can run again (the writer retries an operation from its start after an outage, and
--resume logs stored refits again): a run's model is found by its source run, a version by its run. A store
without a Model Registry (`registry_missing`) is said in one line and the study ends normally.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from msdn.study.results import TUNED, RefitResult, TrialSummary

BEST, AUTHORS = "best", "authors"  # the registered model's aliases
MODEL_TYPE = "msdn"
# Phrases of the errors a store without a Model Registry gives: MLflow's server when its registry store cannot be
# made ("Model registry functionality is unavailable; got unsupported URI ..."), a server or proxy without the
# registry's endpoints (404), a client whose registry URI has no store.
MISSING_REGISTRY = ("model registry functionality is unavailable", "endpoint_not_found", "feature_disabled",
                    "unsupported uri", "404 not found")


class UnusableCheckpoint(Exception):
    """A refit's checkpoint cannot be made into a model (missing, damaged, not ours): said, and not retried."""


def registered_model_name(dataset: str) -> str:
    return f"msdn-{dataset}"


def registry_missing(exc: BaseException) -> str | None:
    """Why the store has no Model Registry, when `exc` says so (its first line); None for any other error."""
    text = f"{type(exc).__name__} {getattr(exc, 'error_code', '')} {exc}"
    if type(exc).__name__ == "UnsupportedModelRegistryStoreURIException" or \
            any(phrase in text.lower() for phrase in MISSING_REGISTRY):
        first = " ".join((str(exc).strip().splitlines() or [type(exc).__name__])[0].split())
        return first if len(first) <= 200 else first[:199] + "…"
    return None


def model_of_run(c, experiment_id: str, run_id: str) -> str | None:
    """The id of the READY logged model whose source run is `run_id`; a PENDING one (an attempt cut off by an
    outage) is deleted, so the next attempt starts clean."""
    from mlflow.entities import LoggedModelStatus

    found = c.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    ready = [m.model_id for m in found if m.status == LoggedModelStatus.READY]
    for model in found:
        if model.model_id not in ready:
            c.delete_logged_model(model.model_id)
    return ready[0] if ready else None


def local_checkpoint(uri: str, folder: Path) -> Path:
    """The refit's checkpoint as a local file: its path, or a copy from object storage (s3://, gs://) in `folder`."""
    if "://" not in uri:
        return Path(uri)
    from msdn.study.refit import read_file

    path = folder / Path(uri).name
    data = read_file(uri)
    if data is None:
        raise FileNotFoundError(f"{uri}: no such file")
    path.write_bytes(data)
    return path


def log_refit_model(c, experiment_id: str, run_id: str, refit: RefitResult, *, dataset: str, example=None,
                    test: tuple[str, str] | None = None) -> str:
    """The refit's logged model on its run `run_id` (made unless the run has one); returns its model id.

    `example`: region features for the input example; `test`: (name, digest) of the test split's dataset, to which
    the test figures are linked on the model. A checkpoint that cannot be made into a model raises
    UnusableCheckpoint before anything is written to the store; the store's errors propagate (the writer retries).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME

    from msdn.mlflow_model import save_pyfunc

    existing = model_of_run(c, experiment_id, run_id)
    if existing is not None:
        return existing
    settings = {k: refit.train_config.get(k) for k in ("alpha", "gamma", "epochs", "seed")}
    with tempfile.TemporaryDirectory(prefix="msdn-model-") as tmp:
        # The model folder first: a checkpoint that cannot be a model fails here, before the store is written to.
        try:
            folder = save_pyfunc(Path(tmp) / "model", local_checkpoint(str(refit.checkpoint), Path(tmp)), example,
                                 metadata_={"dataset": dataset, "refit": refit.name, "device": refit.device,
                                            "threads": refit.threads, **settings})
        except Exception as exc:  # noqa: BLE001 - whatever the checkpoint's problem, retrying cannot fix it
            raise UnusableCheckpoint(f"{refit.checkpoint}: {type(exc).__name__}: {exc}") from exc
        model = c.create_logged_model(
            experiment_id, name=f"msdn-{dataset}-{refit.name}", source_run_id=run_id, model_type=MODEL_TYPE,
            params={k: str(v) for k, v in sorted(refit.train_config.items())},
            tags={"refit": refit.name, "refit.config": refit.config, "refit.seed": str(refit.seed)})
        described = Model.load(str(folder))  # its MLmodel names the logged model and its run
        described.artifact_path, described.run_id = model.artifact_location, run_id
        described.model_uuid = described.model_id = model.model_id
        described.save(str(folder / MLMODEL_FILE_NAME))
        c.log_model_artifacts(model.model_id, str(folder))
    c.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=refit.epochs)])
    name, digest = test if test is not None else (None, None)
    # The run's own test figures (their timestamps too, so the run's history gains no second point), now linked
    # to the model and the test split: the model's page shows them (what mlflow's Model.log does for a run).
    figures = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id, dataset_name=name,
                      dataset_digest=digest, run_id=run_id)
               for key in refit.metrics for m in c.get_metric_history(run_id, key) if m.step == refit.epochs]
    if figures:
        c.log_batch(run_id, metrics=figures)
    c.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def version_tags(refit: RefitResult, *, experiment: str, experiment_id: str, parent_run_id: str, run_id: str,
                 best: TrialSummary | None = None, best_run_name: str | None = None) -> dict[str, str]:
    """Where a registered version came from: the study and its runs, the refit and its settings, its test figures;
    for the tuned configuration the best trial (its id and run name)."""
    tags = {"study": experiment, "mlflow.experiment_id": experiment_id, "study_run_id": parent_run_id,
            "refit_run_id": run_id, "refit": refit.name, "refit.config": refit.config, "seed": str(refit.seed),
            "epochs": str(refit.epochs), "protocol": "paper (trainval), tested once on the test split"}
    tags.update({k: str(refit.train_config[k]) for k in ("alpha", "gamma") if k in refit.train_config})
    tags.update({f"test_{k}": f"{refit.metrics[k]:.4f}" for k in ("S", "U", "H", "zsl_acc") if k in refit.metrics})
    if refit.config == TUNED and best is not None:
        tags.update({"trial_id": best.trial_id, "trial_run": best_run_name or best.trial_id,
                     "trial_best_epoch": str(best.best_epoch)})
    return tags


def register(c, name: str, model_id: str, run_id: str, alias: str, tags: dict[str, str], description: str) -> str:
    """A version of the registered model `name` for the logged model `model_id` (found again by its run when it
    exists), with `tags`; `alias` moved to it. Returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name, description=f"MSDN on {name.removeprefix('msdn-')}, refit by msdn-tune "
                                  f"studies: alias '{BEST}' is the latest study's tuned configuration, '{AUTHORS}' the "
                                  "authors' configuration, each the first refit seed.")
    except MlflowException as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
    found = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    # The source is the logged model's artifact location (what a models:/<model id> source resolves to): a SQLite
    # registry would look models:/ up through the process's tracking URI, not this client's (MLflow 3.17).
    version = found[0] if found else c.create_model_version(
        name, source=c.get_logged_model(model_id).artifact_location, run_id=run_id, tags=tags,
        description=description, model_id=model_id)
    c.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def register_refits(c, choices: list[tuple[str, RefitResult, str, dict[str, str]]], name: str,
                    say: Callable[[str], None], store: str) -> dict[str, str]:
    """Register each (alias, refit, run id, tags) of `choices` (`register`); returns alias -> version.

    A refit whose run has no logged model is said and skipped; a store without a Model Registry is said in one
    line, and nothing more is tried. Other errors (an outage) propagate, for the writer to retry.
    """
    versions: dict[str, str] = {}
    for alias, refit, run_id, tags in choices:
        model_id = model_of_run(c, tags["mlflow.experiment_id"], run_id)
        if model_id is None:
            say(f"MLflow: refit {refit.name} has no logged model; not registered as {name}@{alias}")
            continue
        description = (f"Refit {refit.name} of study `{tags['study']}` (run {run_id}): trained on trainval, tested "
                       f"once: " + ", ".join(f"{k} {tags[k]}" for k in ("test_S", "test_U", "test_H") if k in tags))
        try:
            versions[alias] = register(c, name, model_id, run_id, alias, tags, description)
        except Exception as exc:  # noqa: BLE001 - only a missing registry is handled here
            reason = registry_missing(exc)
            if reason is None:
                raise
            say(f"MLflow: the tracking store {store} has no Model Registry ({reason}); the refits' models are logged "
                "on their runs (Logged models), not registered")
            return versions
        # the URI is what mlflow.pyfunc.load_model and `evaluate --model` take; kept under 120 columns
        say(f"MLflow: refit {refit.name} registered as models:/{name}@{alias} (version {versions[alias]})")
    return versions


def first_refits(tuned: list[RefitResult], baseline: list[RefitResult]) -> list[tuple[str, RefitResult]]:
    """(alias, refit) to register: the first tuned seed as BEST, the first authors' seed as AUTHORS (when run)."""
    return [(BEST, tuned[0])] + ([(AUTHORS, baseline[0])] if baseline else [])

