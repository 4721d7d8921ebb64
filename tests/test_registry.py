"""The refits' models, the Model Registry, data lineage and source tags, at the end of a study, in-process.

A recorded study (tests/data/study/, replayed as tests/test_conclude.py does) ends with `conclude` against a real
SQLite store, after its tuned refit was trained for real (`refit_and_test`, this process: no Ray). Then, as a
user would: `mlflow.pyfunc.load_model("models:/msdn-synthetic@best")` in a fresh process predicts the test split
with exactly the refit's logged S/U/H, and `python -m msdn.evaluate --model` evaluates the registered model as
`--checkpoint` evaluates its file. Against real `mlflow server`s: one without a Model Registry (the study ends
normally and says so in one line), and one stopped when the registration is due (the writer retries).
"""
from __future__ import annotations

import json
import os
import pickletools
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow_server import MlflowServer
from test_conclude import COMPLETED, Study, store_recorded_refits

from msdn.evaluate import main as evaluate_main
from msdn.study.conclude import base_config
from msdn.study.refit import RefitStore, refit_and_test, refit_plan
from msdn.study.results import BASELINE, TUNED, RefitResult, best_trial, trial_summaries
from msdn.study.tracking import registry
from msdn.study.tracking.store import client
from msdn.study.tracking.writer import TrackingWriter
from msdn.study.trainable import DataSpec

FIGURES = ("S", "U", "H", "zsl_acc")
NAME = "msdn-synthetic"


def train_refits(study: Study, synthetic_root: Path) -> None:
    """The tuned refit trained for real with one thread (as a one-CPU Ray task); the authors' one stored with the
    recorded figures and the tuned refit's checkpoint as a stand-in (the recipe's 10 epochs would add a minute:
    what is checked of it is its registration)."""
    opts, space, records = study.opts, study.space, COMPLETED["records"]
    best = best_trial(trial_summaries(records, space.metric, space.mode, opts.max_epochs), space.metric, space.mode)
    store = RefitStore.of(opts)
    specs = refit_plan(opts, base_config(opts, space), space.fixed, best)
    threads = torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        tuned = refit_and_test(specs[0], DataSpec("synthetic", str(synthetic_root)), store.root)
    finally:
        del os.environ["OMP_NUM_THREADS"]
        torch.set_num_threads(threads)
    recorded = next(r for r in COMPLETED["refits"] if r["config"] == BASELINE)
    stand_in = study.folder / "authors-checkpoint.pt"
    shutil.copy(tuned.checkpoint, stand_in)
    store.save(RefitResult(**{**recorded, "seed": specs[1].seed, "train_config": specs[1].train_config}), stand_in)


@pytest.fixture(scope="module")
def ended(tmp_path_factory, synthetic_root):
    """A study ended with a real tuned refit: (the Study, its outcome, its console lines)."""
    folder = tmp_path_factory.mktemp("registry")
    study = Study(folder, f"sqlite:///{folder / 'mlflow.db'}", synthetic_root, COMPLETED["records"], refit_seeds=1)
    study.parent.writer.progress = study.console.append
    train_refits(study, synthetic_root)
    with study.counter:
        for record in COMPLETED["records"]:
            study.run(record.trial_id)
    outcome = study.conclude(COMPLETED["records"])
    assert outcome.state == "completed" and outcome.unlogged == [] and outcome.dropped == [], outcome
    return study, outcome


def refit_run(study: Study, config: str):
    (run,) = [r for r in study.refit_runs() if r.data.tags["refit.config"] == config]
    return run


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_each_refit_logs_its_model_on_its_run_and_the_first_seeds_are_registered(ended):
    study, outcome = ended
    c = study.client()
    tuned, authors = refit_run(study, TUNED), refit_run(study, BASELINE)
    for run, refit in ((tuned, outcome.refits.tuned[0]), (authors, outcome.refits.baseline[0])):
        (model,) = c.search_logged_models([study.parent.experiment_id],
                                          filter_string=f"source_run_id = '{run.info.run_id}'")
        assert str(model.status.value if hasattr(model.status, "value") else model.status) == "READY"
        assert model.name == f"{NAME}-{refit.name}" and model.params["seed"] == str(refit.seed)
        assert [o.model_id for o in c.get_run(run.info.run_id).outputs.model_outputs] == [model.model_id]
        # the test figures are on the model, linked to the test split's dataset
        linked = {m.key: m for m in model.metrics}
        assert linked["H"].value == pytest.approx(refit.metrics["H"])
        assert linked["H"].dataset_name == "synthetic/paper/test"
    versions = {alias: c.get_model_version_by_alias(NAME, alias) for alias in ("best", "authors")}
    assert versions["best"].run_id == tuned.info.run_id and versions["authors"].run_id == authors.info.run_id
    tags = versions["best"].tags
    best = outcome.best
    assert tags["study"] == "msdn-synthetic-val" and tags["mlflow.experiment_id"] == study.parent.experiment_id
    assert tags["study_run_id"] == study.parent.run_id and tags["trial_id"] == best.trial_id
    assert tags["trial_run"] == outcome.best_run_name and tags["seed"] == str(outcome.refits.tuned[0].seed)
    assert (float(tags["alpha"]), float(tags["gamma"])) == (best.params["alpha"], best.params["gamma"])
    assert "trial_id" not in versions["authors"].tags and versions["authors"].tags["refit.config"] == BASELINE
    assert [line for line in study.console if line.startswith("MLflow: refit ")] == [
        f"MLflow: refit {outcome.refits.tuned[0].name} registered as models:/{NAME}@best (version 1)",
        f"MLflow: refit {outcome.refits.baseline[0].name} registered as models:/{NAME}@authors (version 2)"]


PREDICT = """
import json, sys
import mlflow, numpy as np
from msdn.data import load_benchmark
from msdn.metrics import harmonic_mean, per_class_accuracy
model = mlflow.pyfunc.load_model("models:/msdn-synthetic@best")
bench = load_benchmark("synthetic", sys.argv[1], progress=None)
out = {}
for name, idx in (("S", bench.test_seen_loc), ("U", bench.test_unseen_loc)):
    scores = model.predict(bench.features[idx].astype(np.float32))
    assert scores.dtype == np.float32 and scores.shape == (len(idx), bench.num_classes), scores.shape
    out[name] = per_class_accuracy(scores.argmax(1), bench.labels[idx])
maps = bench.features[bench.test_unseen_loc[:5]].astype(np.float32).transpose(0, 2, 1).reshape(5, -1, 7, 7)
same = model.unwrap_python_model().predict(None, maps).argmax(1) == model.predict(
    bench.features[bench.test_unseen_loc[:5]].astype(np.float32)).argmax(1)
out["H"], out["maps_agree"] = harmonic_mean(out["S"], out["U"]), bool(same.all())
print(json.dumps(out))
"""


def predict_test_split(tracking_uri: str, data_root: Path, cwd: Path, threads: int = 1) -> dict:
    """S, U, H of the arg-max of `models:/msdn-synthetic@best` on the synthetic test split, in a fresh process with
    `threads` torch threads (the refit's: float sums depend on them); and whether feature maps predict the same."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", PREDICT, str(data_root)], capture_output=True, text=True, env=env,
                         timeout=600, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_the_registered_model_predicts_the_test_split_as_the_refit_was_scored(ended, synthetic_root):
    study, outcome = ended
    run = study.client().get_run(refit_run(study, TUNED).info.run_id)
    predicted = predict_test_split(study.opts.mlflow_uri, synthetic_root, study.folder, outcome.refits.tuned[0].threads)
    assert {k: predicted[k] for k in ("S", "U", "H")} == {k: run.data.metrics[k] for k in ("S", "U", "H")}
    assert predicted["maps_agree"]  # (N, C, H, W) feature maps predict the same as their (N, R, C) regions


def test_evaluate_takes_a_registered_model_as_it_takes_its_checkpoint_file(ended, synthetic_root, capsys):
    study, outcome = ended
    common = ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--json", "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert evaluate_main(["--model", f"models:/{NAME}@best", "--mlflow-uri", study.opts.mlflow_uri, *common]) == 0
        by_model = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert evaluate_main(["--checkpoint", outcome.refits.tuned[0].checkpoint, *common]) == 0
        by_file = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        torch.set_num_threads(threads)
    assert by_model == by_file
    assert {k: by_model[k] for k in FIGURES} == {k: outcome.refits.tuned[0].metrics[k] for k in FIGURES}
    # a name or alias the store does not have: one paragraph naming the flag and the store, exit 2
    assert evaluate_main(["--model", f"models:/{NAME}@nope", "--mlflow-uri", study.opts.mlflow_uri, *common]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --model models:/{NAME}@nope: cannot be loaded from the tracking store "
                            f"{study.opts.mlflow_uri}") and "Traceback" not in error


def test_the_model_pickles_nothing_but_a_reference_to_its_class(ended, tmp_path):
    study, _ = ended
    import mlflow

    c = study.client()
    source = c.get_model_version_download_uri(NAME, c.get_model_version_by_alias(NAME, "best").version)
    local = mlflow.artifacts.download_artifacts(source, dst_path=str(tmp_path), tracking_uri=study.opts.mlflow_uri)
    pickled = (Path(local) / "python_model.pkl").read_bytes()
    strings, classes = [], set()
    for op, arg, _ in pickletools.genops(pickled):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            classes.add(".".join(strings[-2:]))
    # the model's class, by name, and MLflow's cached type hints (np.ndarray in, out): no weights, no torch object
    assert classes == {"msdn.mlflow_model.MsdnPyfunc", "mlflow.models.signature._TypeHints", "numpy.ndarray"}
    assert len(pickled) < 1000 and b"torch" not in pickled
    assert (Path(local) / "artifacts" / "checkpoint.pt").is_file()
    requirements = (Path(local) / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} == {"msdn-tune", "mlflow", "torch", "numpy"}


def test_runs_record_their_datasets_and_their_source(ended):
    study, _ = ended
    def inputs(run) -> dict[str, tuple[str, str]]:
        return {next(t.value for t in i.tags if t.key == "mlflow.data.context"): (i.dataset.name, i.dataset.digest)
                for i in study.client().get_run(run.info.run_id).inputs.dataset_inputs}

    trials = list(study.trial_runs().values())
    seen = {json.dumps(inputs(run), sort_keys=True) for run in trials}
    assert len(seen) == 1  # every trial read the same data
    trial = inputs(trials[0])
    assert set(trial) == {"training", "validation"}
    assert trial["training"][0] == "synthetic/val/train" and trial["validation"][0] == "synthetic/val/validation"
    for config in (TUNED, BASELINE):
        refit = inputs(refit_run(study, config))
        assert refit == {"training": (refit["training"][0], refit["training"][1]), "test": refit["test"]}
        assert refit["training"][0] == "synthetic/paper/trainval" and refit["test"][0] == "synthetic/paper/test"
    parent = study.parent_run()
    for run in [parent, *trials, *study.refit_runs()]:
        assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.source.name"]
        assert run.data.tags.get("mlflow.source.git.commit") == parent.data.tags["git_commit"] or \
            parent.data.tags["git_commit"] == "unknown"


def test_refit_runs_carry_their_system_metrics_per_epoch(ended):
    study, outcome = ended
    run = refit_run(study, TUNED)
    history = study.client().get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert sorted(m.step for m in history) == list(range(1, outcome.refits.tuned[0].epochs + 1))
    assert all(0.0 <= m.value <= 100.0 for m in history)
    memory = study.client().get_metric_history(run.info.run_id, "system/process_memory_rss_megabytes")
    assert all(m.value > 50 for m in memory)  # a process that loaded torch and the benchmark
    # each epoch's figures carry the time they were taken, in order
    assert [m.timestamp for m in sorted(history, key=lambda m: m.step)] == sorted(m.timestamp for m in history)


def copy_refits(source: Study, study: Study) -> None:
    """The refits `source` trained, stored for `study` (the same plan): it finds them and does not run them."""
    shutil.copytree(RefitStore.of(source.opts).root, RefitStore.of(study.opts).root)


@pytest.mark.slow
def test_a_store_without_a_model_registry_is_said_once_and_the_study_ends_normally(tmp_path, synthetic_root, ended):
    """A real `mlflow server` whose registry store cannot be made (MLflow's own refusal, as for any registry URI it
    does not support): tracking works, every registry request is refused."""
    server = MlflowServer(tmp_path, extra_args=["--registry-store-uri", "none://no-registry"])
    server.start()
    try:
        study = Study(tmp_path, server.uri, synthetic_root, COMPLETED["records"], refit_seeds=1)
        study.parent.writer.progress = study.console.append
        copy_refits(ended[0], study)
        with study.counter:
            for record in COMPLETED["records"]:
                study.run(record.trial_id)
        outcome = study.conclude(COMPLETED["records"])
        models = study.client().search_logged_models([study.parent.experiment_id])
    finally:
        server.stop()
    assert outcome.state == "completed" and outcome.unlogged == [] and outcome.dropped == []
    (line,) = [line for line in study.console if "Registry" in line or "registered" in line]
    assert line.startswith(f"MLflow: the tracking store {server.uri} has no Model Registry (INVALID_PARAMETER_VALUE: "
                           "Model registry functionality is unavailable; got unsupported URI 'none://no-registry'")
    assert line.endswith("); the refits' models are logged on their runs (Logged models), not registered")
    assert len(models) == 2  # both refits' models, on their runs


@pytest.mark.slow
def test_registration_cut_off_by_a_lost_server_is_retried_until_it_is_back(tmp_path, ended):
    """The tracking server stops just as the registration is due (the writer's previous operation stops it): the
    registration fails, the writer retries it, the server comes back, and it is registered once."""
    source, outcome = ended
    server = MlflowServer(tmp_path)
    server.start()
    lines: list[str] = []
    writer = TrackingWriter(server.uri, progress=lines.append)
    try:
        c = client(server.uri)
        experiment_id = c.create_experiment("lost")
        run_id = c.create_run(experiment_id, run_name="refit tuned").info.run_id
        refit = outcome.refits.tuned[0]
        registry.log_refit_model(c, experiment_id, run_id, refit, dataset="synthetic",
                                 example=source.parent.data.example)
        tags = {"mlflow.experiment_id": experiment_id, "study": "lost", "test_H": "0.5"}
        writer.submit("the server stops", lambda _c: server.stop())
        writer.submit("registering", lambda c: registry.register_refits(
            c, [("best", refit, run_id, tags)], NAME, lines.append, server.uri))

        def come_back() -> None:
            while writer.last_error is None:
                time.sleep(0.2)
            time.sleep(2)  # a few failed attempts
            server.start()

        threading.Thread(target=come_back, daemon=True).start()
        assert writer.flush(300), lines
        versions = c.search_model_versions(f"name = '{NAME}'")
        alias = c.get_model_version_by_alias(NAME, "best")
    finally:
        writer.close(5)
        server.stop()
    assert [v.version for v in versions] == ["1"] and alias.version == "1" and alias.run_id == run_id
    assert lines[0].startswith(f"MLflow store {server.uri} is not answering (")
    assert lines[1] == f"MLflow: refit {refit.name} registered as models:/{NAME}@best (version 1)"
    assert lines[2].startswith(f"MLflow store {server.uri} is back after ") and len(lines) == 3


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_a_checkpoint_that_cannot_be_a_model_is_said_and_the_study_ends_normally(tmp_path, synthetic_root):
    """Refits whose stored checkpoints hold no weights (stand-ins): no model, nothing registered, one line each."""
    study = Study(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", synthetic_root, COMPLETED["records"],
                  refit_seeds=1)
    study.parent.writer.progress = study.console.append
    store_recorded_refits(study, COMPLETED["records"], COMPLETED["refits"])
    outcome = study.conclude(COMPLETED["records"])
    assert outcome.state == "completed" and outcome.unlogged == [] and outcome.dropped == []
    said = [line for line in study.console if line.startswith("MLflow: refit ")]
    names = [r.name for r in outcome.refits.tuned + outcome.refits.baseline]
    assert [line.split(":")[1] for line in said[:2]] == [f" refit {name}" for name in names]
    assert all("no model logged (its checkpoint " in line and "CheckpointError" in line for line in said[:2])
    assert said[2:] == [f"MLflow: refit {names[0]} has no logged model; not registered as {NAME}@best",
                        f"MLflow: refit {names[1]} has no logged model; not registered as {NAME}@authors"]
    assert not study.client().search_registered_models()
