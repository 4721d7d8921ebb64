"""The refits (msdn/study/refit.py): seeds, the tuned and authors' plan, the storage that makes them resumable,
their MLflow runs and parent figures, and the round trip: best_config.yaml retrains the refit exactly.

No Ray here: `refit_and_test` is the task's function, called in this process. Whole studies that refit
(parallel tasks, Ctrl+C during the refits, --resume) are in tests/test_study_interrupt.py.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msdn.checkpoint import CHECKPOINT_FILE
from msdn.config import DATASET_DEFAULTS, TrainConfig, default_config, overrides_from_yaml
from msdn.study.options import StudyOptions, StudyRequest, with_defaults
from msdn.study.refit import (BEST_CONFIG_FILE, RESULT_FILE, RefitSpec, RefitStore, refit_and_test,
                              refit_plan, refit_seeds, tuned_config, write_best_config)
from msdn.study.results import BASELINE, TUNED, RefitResult, Refits, TrialSummary
from msdn.study.stats import paired_difference, t_interval
from msdn.study.trainable import DataSpec
from msdn.study.tracking.parent import refit_metrics

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("S", "U", "H", "zsl_acc", "AUSUC")


def study_options(tmp_path: Path, data_root: Path | str = "data", **changes) -> StudyOptions:
    return with_defaults(StudyRequest(dataset="synthetic", storage_path=str(tmp_path / "results"), experiment="exp",
                                      data_root=str(data_root), max_epochs=4, **changes), 4)


def study_base(data_root: Path | str = "data") -> dict:
    """The study's fixed settings, as runner._run builds them (validation protocol, max epochs, device)."""
    return default_config("synthetic").replace(protocol="val", data_root=str(data_root), epochs=4,
                                               device="cpu").to_dict()


def best(seed: int = 77, best_epoch: int = 2, params: dict | None = None, **best_epoch_result) -> TrialSummary:
    params = {"lr": 3e-4, "lambda_dis": 2e-3, "momentum": 0.0} if params is None else params
    result = {"H": 0.5, "S": 0.5, "U": 0.5, "trial_seed": seed, "training_iteration": best_epoch, **best_epoch_result}
    return TrialSummary("t1", "completed", 4, params, best=result, best_epoch=best_epoch)


def fake(config: str, seed: int, H: float, S: float = 0.6) -> RefitResult:
    metrics = {"S": S, "U": 0.5, "H": H, "zsl_acc": 0.55, "AUSUC": H - 0.2, "gamma": 2.0, "H_grid": H + 0.01,
               "S_grid": S, "U_grid": 0.5, "grid_alpha": 0.9, "grid_gamma": 1.5}
    return RefitResult(metrics=metrics, epochs=2 if config == TUNED else 10, seed=seed, train_time=3.0,
                       curve={}, config=config)


def test_refit_seeds_begin_with_the_best_trials_seed_and_are_the_same_on_resume():
    seeds = refit_seeds(77, study_seed=0, count=3)
    assert seeds[0] == 77 and len(set(seeds)) == 3 and all(0 <= s < 2**31 - 1 for s in seeds)
    assert refit_seeds(77, 0, 3) == seeds  # --resume derives the same seeds
    assert refit_seeds(77, 0, 5)[:3] == seeds  # more seeds extend the list
    assert refit_seeds(77, 1, 3)[1:] != seeds[1:]  # another study seed, other seeds
    assert refit_seeds(77, 0, 1) == [77]  # one seed: today's single refit


def test_plan_refits_the_tuned_and_the_authors_configuration_with_the_same_seeds(tmp_path):
    plan = refit_plan(study_options(tmp_path), study_base(), {"batch_size": 25}, best(grid_alpha=0.55, grid_gamma=1.3))
    tuned = [s for s in plan if s.config == TUNED]
    baseline = [s for s in plan if s.config == BASELINE]
    assert [s.seed for s in tuned] == [s.seed for s in baseline] == refit_seeds(77, 0, 3)
    for spec in tuned:
        cfg = spec.train_config
        assert (cfg["protocol"], cfg["epochs"], cfg["seed"]) == ("paper", 2, spec.seed)  # trainval, the best epoch
        assert (cfg["lr"], cfg["lambda_dis"], cfg["momentum"]) == (3e-4, 2e-3, 0.0)  # the best trial's parameters
        assert (cfg["alpha"], cfg["gamma"]) == (0.55, 1.3)  # the settings it chose on validation at that epoch
        assert spec.name == f"tuned-seed{spec.seed}"
    recipe = DATASET_DEFAULTS["synthetic"]
    for spec in baseline:
        cfg = spec.train_config
        assert (cfg["protocol"], cfg["epochs"], cfg["seed"]) == ("paper", recipe["epochs"], spec.seed)
        assert (cfg["lr"], cfg["momentum"], cfg["alpha"], cfg["gamma"]) == (recipe["lr"], recipe["momentum"],
                                                                             recipe["alpha"], 2.0)
        assert cfg["batch_size"] == 25  # the search space's fixed settings hold for both
        assert cfg["device"] == "cpu"
    single = refit_plan(study_options(tmp_path, refit_seeds=1, baseline=False), study_base(), {}, best())
    assert [(s.config, s.seed) for s in single] == [(TUNED, 77)]
    # without a settings grid in the trial's result, the trial's own alpha and gamma stay
    assert single[0].train_config["alpha"] == recipe["alpha"]


def test_store_keeps_finished_refits_and_finds_only_the_same_configuration(tmp_path):
    store = RefitStore(str(tmp_path / "refits"))
    spec = RefitSpec(TUNED, 77, tuned_config(study_base(), best(), 77))
    assert store.load(spec) is None
    checkpoint = tmp_path / "trained.pt"
    checkpoint.write_bytes(b"weights")
    result = RefitResult(metrics={"H": 0.5}, epochs=2, seed=77, train_time=1.0, curve={"curve_H": [0.1]},
                         config=TUNED, train_config=spec.train_config)
    stored = store.save(result, checkpoint)
    folder = tmp_path / "refits" / "tuned-seed77"
    assert stored.checkpoint == str(folder / CHECKPOINT_FILE) and (folder / CHECKPOINT_FILE).read_bytes() == b"weights"
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_FILE, RESULT_FILE]  # no temporary file left
    assert store.load(spec) == stored
    # a study resumed on another device or data root still finds it; another configuration does not
    moved = RefitSpec(TUNED, 77, {**spec.train_config, "device": "cuda", "data_root": "/elsewhere"})
    assert store.load(moved) == stored
    assert store.load(RefitSpec(TUNED, 77, {**spec.train_config, "lr": 1e-3})) is None
    assert store.load(RefitSpec(BASELINE, 77, spec.train_config)) is None
    # a checkpoint without its result is a refit cut short: not finished; a damaged result is ignored too
    (folder / RESULT_FILE).unlink()
    assert store.load(spec) is None
    (folder / RESULT_FILE).write_text("{not json")
    assert store.load(spec) is None


def test_refits_statistics_and_the_parent_runs_figures():
    refits = Refits(tuned=[fake(TUNED, 1, 0.62), fake(TUNED, 2, 0.58), fake(TUNED, 3, 0.66)],
                    baseline=[fake(BASELINE, 3, 0.61), fake(BASELINE, 1, 0.60), fake(BASELINE, 2, 0.55)])
    delta = refits.delta("H")
    expected = paired_difference([0.62, 0.58, 0.66], [0.60, 0.55, 0.61])  # paired by seed, whatever the order
    assert (delta.mean, delta.low, delta.high) == (expected.mean, expected.low, expected.high)
    metrics = refit_metrics(refits)
    tuned_H = t_interval([0.62, 0.58, 0.66])
    assert metrics["test_H"] == pytest.approx(tuned_H.mean)
    assert (metrics["test_H_mean"], metrics["test_H_std"], metrics["test_H_ci_low"], metrics["test_H_ci_high"]) == (
        tuned_H.mean, tuned_H.sd, tuned_H.low, tuned_H.high)
    assert metrics["baseline_test_H_mean"] == pytest.approx((0.61 + 0.60 + 0.55) / 3)
    # the settings grid's best on test (for reading): H and the gamma reaching it; no second "best gamma" figure
    assert metrics["test_H_grid"] == pytest.approx((0.63 + 0.59 + 0.67) / 3) and metrics["test_grid_gamma"] == 1.5
    assert not [k for k in metrics if "best" in k]
    assert (metrics["delta_H_mean"], metrics["delta_H_ci_low"], metrics["delta_H_ci_high"]) == (
        expected.mean, expected.low, expected.high)
    ausuc = paired_difference([0.42, 0.38, 0.46], [0.40, 0.35, 0.41])  # AUSUC: H - 0.2 in fake()
    assert [metrics[f"delta_AUSUC_{s}"] for s in ("mean", "std", "ci_low", "ci_high")] == pytest.approx(
        [ausuc.mean, ausuc.sd, ausuc.low, ausuc.high])
    assert metrics["test_AUSUC"] == pytest.approx(0.42) and metrics["baseline_test_AUSUC_mean"] == pytest.approx(
        (0.41 + 0.40 + 0.35) / 3)
    for prefix in ("test", "baseline_test"):
        for key in FIGURES:
            assert {f"{prefix}_{key}_{s}" for s in ("mean", "std", "ci_low", "ci_high")} <= set(metrics)
    assert (metrics["refit_epochs"], metrics["baseline_epochs"], metrics["refit_seeds"]) == (2, 10, 3)
    assert all(math.isfinite(v) for v in metrics.values())
    # one seed, no baseline: today's figures, no interval, no delta
    single = refit_metrics(Refits(tuned=[fake(TUNED, 1, 0.62)]))
    assert single["test_H"] == single["test_H_mean"] == 0.62
    assert not [k for k in single if k.endswith(("_std", "_ci_low", "_ci_high")) or k.startswith(("delta", "baseline"))]
    record = json.loads(json.dumps(refits.to_dict()))
    assert record["seeds"] == [1, 2, 3] and record["delta_H"]["mean"] == pytest.approx(expected.mean)
    assert record["delta_AUSUC"]["mean"] == pytest.approx(ausuc.mean)
    # results stored by an earlier version have no AUSUC: their figures without it, nothing made up
    old = [RefitResult(**{**r.__dict__, "metrics": {k: v for k, v in r.metrics.items() if k != "AUSUC"}})
           for r in refits.tuned]
    earlier = refit_metrics(Refits(tuned=old, baseline=refits.baseline))
    assert "test_H_mean" in earlier and not [k for k in earlier if "AUSUC" in k and not k.startswith("baseline")]


def test_refit_child_runs_are_logged_once_even_when_logged_again_on_resume(tmp_path):
    from msdn.study import tracking
    from msdn.study.tracking.parent import REFIT_CONFIG_TAG, REFIT_NAME_TAG, REFIT_SEED_TAG, ParentRun
    from msdn.study.tracking.writer import TrackingWriter

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    experiment_id = c.create_experiment("refits", artifact_location=(tmp_path / "artifacts").as_uri())
    parent_id = c.create_run(experiment_id, tags={tracking.STUDY_TAG: "parent"}).info.run_id
    classes = {"class_id": [3, 7], "class": ["003.a", "008.b"], "group": ["seen", "unseen"], "images": [4, 2],
               "accuracy": [0.75, 0.5]}
    refit = RefitResult(**{**fake(BASELINE, 5, 0.6).__dict__, "train_config": default_config("synthetic").to_dict(),
                           "classes": classes})
    writer = TrackingWriter(uri, progress=None)
    parent = ParentRun(writer, experiment_id, parent_id)
    try:
        for _ in range(2):  # logged when it finished, then again by a resumed study that found it stored
            parent.log_refit_run(refit, {"dataset": "synthetic", tracking.STUDY_TAG: "trial"})
        assert writer.flush(60)
    finally:
        writer.close(30)
    runs = tracking.child_runs(uri, experiment_id, parent_id)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "refit authors seed=5"
    assert run.data.tags[tracking.STUDY_TAG] == "refit" and run.data.tags[REFIT_NAME_TAG] == "baseline-seed5"
    assert (run.data.tags[REFIT_CONFIG_TAG], run.data.tags[REFIT_SEED_TAG]) == ("baseline", "5")
    assert run.data.params["lr"] == str(DATASET_DEFAULTS["synthetic"]["lr"]) and run.data.params["epochs"] == "10"
    assert run.data.metrics["H"] == 0.6 and run.data.metrics["train_time"] == 3.0
    assert run.data.metrics["AUSUC"] == pytest.approx(0.4)
    (artifact,) = c.list_artifacts(run.info.run_id)  # its per-class test accuracies, logged once
    local = c.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))
    assert artifact.path == "per_class_accuracy.csv" and Path(local).read_text() == (
        "class_id,class,group,images,accuracy\n3,003.a,seen,4,0.750000\n7,008.b,unseen,2,0.500000\n")


def last_json_line(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_best_config_retrains_the_refit_exactly_and_its_checkpoint_evaluates_to_the_same(tmp_path, synthetic_root,
                                                                                          monkeypatch):
    import torch

    opts = study_options(tmp_path, synthetic_root)
    spec = refit_plan(opts, study_base(synthetic_root), {}, best(5, 2, {"lambda_dis": 2e-3}, grid_gamma=1.5))[0]
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Ray sets it for a refit task with one CPU (on_this_worker)
    torch.set_num_threads(1)
    try:
        result = refit_and_test(spec, DataSpec("synthetic", str(synthetic_root)), str(tmp_path / "results" / "refits"))
    finally:
        torch.set_num_threads(threads)
    assert result.threads == 1 and result.device == "cpu"
    assert (result.config, result.seed, result.epochs) == (TUNED, 5, 2)
    assert 0.0 < result.metrics["H"] <= 1.0  # trained, not a degenerate model whose figures would match trivially
    # the same single test evaluation gives the seen-unseen curve (thinned) and the per-class accuracies
    assert 0.0 < result.metrics["AUSUC"] < 1.0 and 2 < len(result.seen_unseen["curve_su_U"]) <= 200
    assert result.seen_unseen["curve_su_U"][0] == 0.0 and result.seen_unseen["curve_su_S"][-1] == pytest.approx(0.0)
    classes = result.classes
    assert classes["class"][0] == "001.synthetic_class_00" and sum(classes["images"]) > 0
    for group, figure in (("seen", "S"), ("unseen", "U")):
        accuracies = [a for a, g in zip(classes["accuracy"], classes["group"]) if g == group]
        assert sum(accuracies) / len(accuracies) == pytest.approx(result.metrics[figure])
    assert RefitResult.from_json(json.loads(json.dumps(result.to_json()))) == result  # what the storage keeps

    where, local = write_best_config(opts, spec.train_config, tmp_path, result)
    exported = tmp_path / "results" / "exp" / BEST_CONFIG_FILE
    assert where == str(exported) and exported.read_text() == local.read_text()
    # it names the refit it repeats, its figures, and how to get them bit for bit (its device and threads)
    header = exported.read_text()
    assert f"refit with this seed ({result.checkpoint}) reached test S={result.metrics['S']:.4f}" in header
    assert "OMP_NUM_THREADS=1 python -m msdn.train --dataset synthetic --device cpu --config best_config.yaml" in header
    # the file holds every field the refit trained with, and msdn.train reads it back to the same TrainConfig
    read = overrides_from_yaml(exported)
    assert set(read) == set(spec.train_config) and TrainConfig(**read) == TrainConfig(**spec.train_config)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the refit's threads: float sums depend on the thread count
    train = subprocess.run([sys.executable, "-m", "msdn.train", "--config", str(exported), "--dataset", "synthetic",
                            "--json"], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    last = last_json_line(train.stdout)
    assert last["epoch"] == 2
    assert {k: last[k] for k in FIGURES} == {k: result.metrics[k] for k in FIGURES}

    evaluate = subprocess.run([sys.executable, "-m", "msdn.evaluate", "--checkpoint", result.checkpoint, "--dataset",
                               "synthetic", "--data-root", str(synthetic_root), "--json"], capture_output=True,
                              text=True, env=env, timeout=600, cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert {k: last_json_line(evaluate.stdout)[k] for k in FIGURES} == {k: result.metrics[k] for k in FIGURES}
